"""Leases: which daemon works on a mailbox now, and when the mailbox is due next.

Several daemons (on several machines, one PostgreSQL database) divide the mailboxes among
themselves. A daemon *acquires* due, free mailboxes (`SELECT … FOR UPDATE SKIP LOCKED` on
PostgreSQL; a compare-and-set on SQLite), *renews* them while it works, and *releases* them with
their next run. Every acquisition bumps the lease's `generation`; every write the holder makes
checks owner and generation inside its own transaction (`fence`, done for each transaction by
`FencedStore`), so a daemon that lost its lease — it stalled past the expiry and another took the
mailbox — can no longer write: its transaction is rolled back with `LeaseLost`.

A lease whose holder is a process of this host that is gone (killed, out of memory) is free at
once, not only when it expires: the holder id names the process (`maillink.holders`), and
`acquire` takes such a lease over with the next generation, fenced like any other takeover.

Times come from the daemons' clocks (UTC); keep them in step (NTP) well within a lease's length.

Cheap with many mailboxes (issue 11): the due mailboxes are read from `ix_leases_due` in the order
they are taken (a few index entries, no sort) and taken with one compare-and-set UPDATE; the
holders that might be gone are read from the few held leases of this host (`ix_leases_held`), at
most every `GONE_EVERY_SECONDS` per process (`GoneHolders`). A mailbox gets its lease row when it
is connected, and a paused one (or one that needs re-authorisation) is moved out of the due range
(`accounts.PARKED`) by the status change itself (`store.accounts`), so `ix_leases_due` starts with
mailboxes that can be taken. On PostgreSQL the plans depend on the tables' statistics; where
autovacuum is off nobody else keeps them, so `ensure` runs `ANALYZE` on `leases` and `accounts`
when they are missing or stale (`keep_statistics`).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from maillink import holders
from maillink.store import Store
from maillink.store.accounts import ACTIVE, PARKED
from maillink.store.schema import accounts, leases


class LeaseLost(Exception):
    """The mailbox's lease is no longer this daemon's: stop working on it, write nothing."""


def daemon_id() -> str:
    """An id for this daemon process, unique across machines and restarts:
    hostname-pid-random-tSTART-KEY (`maillink.holders`), so that once the process is gone,
    another process of this host can tell and take its mailboxes over at once."""
    return holders.holder_id()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Lease:
    """One mailbox held by one daemon, as acquired (`expires_at` moves on with each renewal)."""

    account_id: int
    owner: str
    generation: int
    acquired_at: datetime
    failures: int  # failed rounds in a row before this one
    previous_owner: str | None = None  # set when an expired lease of another daemon was taken
    # (or the lease of a process of this host that is gone)
    due_at: datetime | None = None  # when the round was due (its `next_run_at` as acquired)

    @property
    def taken_over(self) -> bool:
        return self.previous_owner is not None and self.previous_owner != self.owner


def _holds(lease: Lease) -> ColumnElement[bool]:
    return and_(
        leases.c.account_id == lease.account_id,
        leases.c.owner == lease.owner,
        leases.c.generation == lease.generation,
    )


def ensure(conn: Connection, now: datetime) -> int:
    """Give every mailbox without a lease row one (due now; out of the due range when it is not
    active), and put back in line the leases whose place does not match their mailbox's status;
    returns how many rows were added.

    The store does both as mailboxes are connected and change status (`store.accounts`): this
    is the safety net a daemon runs at its start and once an hour (mailboxes written by an
    earlier version). Several daemons may do this at once: a row another one added meanwhile is
    left as it is. On PostgreSQL, the first call of a process on a database, then one an hour,
    and every call that added rows also keep the statistics of `leases` and `accounts` current
    (`keep_statistics`).
    """
    check = _statistics_due(conn, now)
    added = _ensure(conn, now)
    _settle(conn, now)
    if check or added:
        keep_statistics(conn, added=added)
    return added


def _ensure(conn: Connection, now: datetime) -> int:
    missing = select(accounts.c.id, accounts.c.status).where(
        ~select(leases.c.account_id).where(leases.c.account_id == accounts.c.id).exists()
    )
    rows = [(i, now if status == ACTIVE else PARKED) for i, status in conn.execute(missing)]
    return _add_rows(conn, rows)


def _settle(conn: Connection, now: datetime) -> None:
    """Leases of mailboxes that are not active: out of the due range (`PARKED`); parked leases
    of active mailboxes: due now."""
    inactive = select(accounts.c.id).where(accounts.c.status != ACTIVE)
    conn.execute(
        update(leases)
        .where(leases.c.next_run_at < PARKED, leases.c.account_id.in_(inactive))
        .values(next_run_at=PARKED)
    )
    active = select(accounts.c.id).where(accounts.c.status == ACTIVE)
    conn.execute(
        update(leases)
        .where(leases.c.next_run_at >= PARKED, leases.c.account_id.in_(active))
        .values(next_run_at=now)
    )


def ensure_one(conn: Connection, account_id: int, now: datetime) -> None:
    """Give this one mailbox a lease row (due now) if it has none: what a one-off round
    (`sync --once`, `backfill`, the web app's first sync) needs, without reading every account."""
    _add_rows(conn, [(account_id, now)])


def _add_rows(conn: Connection, due: list[tuple[int, datetime]]) -> int:
    """Insert a free lease row for each (mailbox, next run) of `due`; a row another process
    added meanwhile is left as it is (insert-or-ignore)."""
    if not due:
        return 0
    rows = [
        {"account_id": i, "generation": 0, "failures": 0, "next_run_at": when, "owner": None}
        for i, when in due
    ]
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(postgresql.insert(leases).on_conflict_do_nothing(), rows)
    elif dialect == "sqlite":
        conn.execute(sqlite.insert(leases).on_conflict_do_nothing(), rows)
    else:  # pragma: no cover - maillink supports SQLite and PostgreSQL only
        conn.execute(insert(leases), rows)
    return len(due)


# -- statistics (PostgreSQL) ---------------------------------------------------------------------
# The rule autovacuum applies by default: analyze once more rows changed than 50 + 10% of the table.
ANALYZE_THRESHOLD = 50
ANALYZE_SCALE = 0.1
STATISTICS_EVERY = timedelta(hours=1)  # how often a running daemon checks them again
_checked: weakref.WeakKeyDictionary[Engine, datetime] = weakref.WeakKeyDictionary()


def _statistics_due(conn: Connection, now: datetime) -> bool:
    """True at the first call of this process for `conn`'s database, then once an hour."""
    if conn.dialect.name != "postgresql":
        return False
    last = _checked.get(conn.engine)
    if last is not None and last <= now < last + STATISTICS_EVERY:
        return False
    _checked[conn.engine] = now
    return True


def stale_statistics(conn: Connection, *, added: int = 0) -> list[str]:
    """Which of `leases` and `accounts` have PostgreSQL statistics that are missing (never
    analyzed, by autovacuum or by hand) or stale (more rows changed since the last ANALYZE than
    autovacuum's default threshold; `added` lease rows just inserted, for as many new mailboxes,
    count too: the cumulative statistics see them only later). Always empty on SQLite."""
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.execute(
        text(
            "SELECT c.relname, c.reltuples, coalesce(s.n_mod_since_analyze, 0) AS changed,"
            " coalesce(s.last_analyze, s.last_autoanalyze) IS NOT NULL AS analyzed"
            " FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE c.oid = ANY(ARRAY[to_regclass('leases'), to_regclass('accounts')])"
        )
    ).all()
    stale = []
    for row in rows:
        changed = int(row.changed) + added
        size = max(float(row.reltuples), 0.0)
        if (
            not row.analyzed
            or row.reltuples < 0
            or changed > ANALYZE_THRESHOLD + ANALYZE_SCALE * size
        ):
            stale.append(str(row.relname))
    return sorted(stale)


def keep_statistics(conn: Connection, *, added: int = 0) -> list[str]:
    """`ANALYZE` the tables of `stale_statistics` (PostgreSQL; about 10 ms at 10,000 mailboxes,
    and it blocks no reads or writes); returns the tables analyzed."""
    stale = stale_statistics(conn, added=added)
    if stale:
        conn.execute(text("ANALYZE " + ", ".join(stale)))
    return stale


GONE_EVERY_SECONDS = 5.0  # how often a process looks for holders of this host that are gone


class GoneHolders:
    """What one process knows of the holders of this host that are gone, looked for at most
    every `every` (a few seconds) instead of at every acquisition, and at once the first time.

    A holder that is gone stays gone (its id names the process and its start time), so the ones
    found are taken over without looking again until the next look."""

    def __init__(self, every: timedelta = timedelta(seconds=GONE_EVERY_SECONDS)) -> None:
        self.every = every
        self._looked_at: datetime | None = None
        self._gone: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def due(self, now: datetime) -> bool:
        """True when this process never looked, or looked `every` ago (or in the future of a
        clock that went back)."""
        with self._lock:
            last = self._looked_at
        return last is None or not last <= now < last + self.every

    def found(self, now: datetime, gone: set[str], *, everywhere: bool) -> frozenset[str]:
        """Record a look (`everywhere`: at every held lease of this host, else at a few
        mailboxes only); returns every holder known to be gone."""
        with self._lock:
            if everywhere:
                self._looked_at = now
                self._gone = frozenset(gone)
            else:
                self._gone |= gone
            return self._gone

    def known(self) -> frozenset[str]:
        with self._lock:
            return self._gone


def acquire(
    conn: Connection,
    owner: str,
    *,
    now: datetime,
    duration: timedelta,
    limit: int,
    exclude: Collection[int] = (),
    due_only: bool = True,
    account_ids: Collection[int] | None = None,
    gone: Callable[[str], bool] = holders.is_gone,
    seen: GoneHolders | None = None,
) -> list[Lease]:
    """Take up to `limit` free mailboxes (no owner, an expired lease, or a holder that `gone`
    says is a dead process of this host), the most overdue first.

    Only active mailboxes are taken (paused and needs_reauth ones are skipped); with `due_only`,
    only those whose `next_run_at` has come. Rows another transaction has locked are skipped, not
    waited for (PostgreSQL); the one UPDATE that takes them is a compare-and-set on each row's
    generation, so two daemons can never both get the same generation (SQLite too).

    The holders that are gone are looked for at each call, unless `seen` (the process's
    `GoneHolders`) looked less than its `every` ago; a call for given `account_ids` (a one-off
    round) always looks, at those mailboxes only.
    """
    if limit <= 0:
        return []
    free = [
        leases.c.owner.is_(None),
        leases.c.expires_at.is_(None),
        leases.c.expires_at <= now,
    ]
    if seen is None or account_ids is not None or seen.due(now):
        dead: set[str] | frozenset[str] = _gone_holders(conn, now, owner, account_ids, gone)
        if seen is not None:
            dead = seen.found(now, set(dead), everywhere=account_ids is None)
    else:
        dead = seen.known()
    if dead:
        free.append(leases.c.owner.in_(sorted(dead)))
    query = (
        select(leases.c.account_id, leases.c.owner, leases.c.generation, leases.c.next_run_at)
        .join(accounts, accounts.c.id == leases.c.account_id)
        .where(accounts.c.status == ACTIVE, or_(*free))
        .order_by(leases.c.next_run_at, leases.c.account_id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=leases)
    )
    if due_only:
        query = query.where(leases.c.next_run_at <= now)
    if exclude:
        query = query.where(leases.c.account_id.not_in(sorted(exclude)))
    if account_ids is not None:
        query = query.where(leases.c.account_id.in_(sorted(account_ids)))
    picked = conn.execute(query).all()
    if not picked:
        return []
    # One compare-and-set for every row picked: a row whose generation moved meanwhile (another
    # daemon took it: SQLite, which has no SKIP LOCKED) is left out of the RETURNING.
    taken = {
        row.account_id: row
        for row in conn.execute(
            update(leases)
            .where(
                leases.c.account_id.in_([row.account_id for row in picked]),
                tuple_(leases.c.account_id, leases.c.generation).in_(
                    [(row.account_id, row.generation) for row in picked]
                ),
            )
            .values(
                owner=owner,
                generation=leases.c.generation + 1,
                acquired_at=now,
                expires_at=now + duration,
            )
            .returning(leases.c.account_id, leases.c.generation, leases.c.failures)
        )
    }
    return [
        Lease(
            account_id=row.account_id,
            owner=owner,
            generation=int(taken[row.account_id].generation),
            acquired_at=now,
            failures=int(taken[row.account_id].failures),
            previous_owner=row.owner,
            due_at=row.next_run_at if row.next_run_at <= now else None,  # not run early
        )
        for row in picked
        if row.account_id in taken
    ]


@functools.cache
def _this_host() -> str:
    """The host part of this host's holder ids (`maillink.holders`)."""
    return holders.parse(holders.holder_id()).host or ""


def _gone_holders(
    conn: Connection,
    now: datetime,
    owner: str,
    account_ids: Collection[int] | None,
    gone: Callable[[str], bool],
) -> set[str]:
    """The holders of unexpired leases that are dead processes of this host (`gone`).

    Only held leases are read (`ix_leases_held`), and of them only those of this host: the
    holders of another host are never judged gone."""
    query = (
        select(leases.c.owner)
        .where(
            leases.c.owner.is_not(None),
            leases.c.owner.startswith(f"{_this_host()}-", autoescape=True),
            leases.c.owner != owner,
            leases.c.expires_at > now,
        )
        .distinct()
    )
    if account_ids is not None:
        query = query.where(leases.c.account_id.in_(sorted(account_ids)))
    return {held for held in conn.execute(query).scalars() if held and gone(held)}


# Built once: it ends every fenced transaction (a backfill commits one every few messages).
_FENCE = (
    update(leases)
    .where(
        leases.c.account_id == bindparam("f_account"),
        leases.c.owner == bindparam("f_owner"),
        leases.c.generation == bindparam("f_generation"),
        leases.c.expires_at > bindparam("f_now"),
    )
    .values(owner=leases.c.owner)
)


def fence(conn: Connection, lease: Lease, now: datetime) -> None:
    """Raise `LeaseLost` unless `lease` is still held (same owner and generation, not expired).

    Run inside the transaction whose writes it guards, as its last statement: on PostgreSQL the
    update locks the lease row until the commit, so no daemon can take the mailbox in between.
    """
    held = conn.execute(
        _FENCE,
        {
            "f_account": lease.account_id,
            "f_owner": lease.owner,
            "f_generation": lease.generation,
            "f_now": now,
        },
    ).rowcount
    if held != 1:
        raise LeaseLost(
            f"account {lease.account_id}: lease generation {lease.generation} of {lease.owner} "
            "is no longer held"
        )


def renew(conn: Connection, lease: Lease, *, now: datetime, duration: timedelta) -> None:
    """Move the lease's expiry to `now + duration`; `LeaseLost` if it already expired or moved."""
    held = conn.execute(
        update(leases)
        .where(_holds(lease), leases.c.expires_at > now)
        .values(expires_at=now + duration)
    ).rowcount
    if held != 1:
        raise LeaseLost(f"account {lease.account_id}: lease expired before it was renewed")


def release(conn: Connection, lease: Lease, *, next_run_at: datetime, failures: int) -> bool:
    """Give the mailbox back with its next run; False when the lease was no longer ours.

    A wake-up that came while the mailbox was being synced (its `next_run_at` moved past the
    acquisition) is kept: the mailbox is due again at once.
    """
    return (
        conn.execute(
            update(leases)
            .where(_holds(lease))
            .values(
                owner=None,
                expires_at=None,
                failures=failures,
                next_run_at=case(
                    (leases.c.next_run_at > lease.acquired_at, leases.c.next_run_at),
                    else_=next_run_at,
                ),
            )
        ).rowcount
        == 1
    )


def wake(conn: Connection, account_id: int, now: datetime) -> bool:
    """Make the mailbox due now (a push notification); False when it has no lease row yet
    (it is then due anyway: a new row is due at once)."""
    return (
        conn.execute(
            update(leases).where(leases.c.account_id == account_id).values(next_run_at=now)
        ).rowcount
        == 1
    )


@dataclass(frozen=True)
class LeaseState:
    account_id: int
    owner: str | None
    generation: int
    expires_at: datetime | None
    next_run_at: datetime
    failures: int


def _state(row: Any) -> LeaseState:
    return LeaseState(
        account_id=row.account_id,
        owner=row.owner,
        generation=int(row.generation),
        expires_at=row.expires_at,
        next_run_at=row.next_run_at,
        failures=int(row.failures),
    )


def state(conn: Connection, account_id: int) -> LeaseState | None:
    """One mailbox's lease and schedule (who holds it, until when); None without a lease row."""
    row = conn.execute(select(leases).where(leases.c.account_id == account_id)).first()
    return _state(row) if row is not None else None


def states(conn: Connection) -> dict[int, LeaseState]:
    """Every mailbox's lease and schedule, by account id (for operations and tests)."""
    return {row.account_id: _state(row) for row in conn.execute(select(leases))}


class FencedStore(Store):
    """The store as the holder of one mailbox's lease sees it: every transaction it commits is
    fenced (`fence` runs as its last statement), so nothing is written once the lease is lost.

    Reads (`engine.connect()`) are not fenced: they write nothing.
    """

    def __init__(self, store: Store, lease: Lease, clock: Callable[[], datetime] = _now) -> None:
        super().__init__(store.engine)
        self.lease = lease
        self.clock = clock

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection
            fence(connection, self.lease, self.clock())

    def close(self) -> None:
        """The engine belongs to the store this one wraps."""
