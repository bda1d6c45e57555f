"""A mailbox round: the one way maillink syncs a mailbox, always under the mailbox's lease.

`Rounds.hold` takes the lease (or is handed one the daemon took), renews it in the background
while the work goes on, builds the syncer on a store whose every write is fenced by the lease,
and releases the mailbox with its next run (docs/how-it-works.md, "Leases and the schedule").
`sync --once` (`sync_round`), `backfill` (`hold_mailbox`), the daemon (`loop.py`) and the web
app's first sync (`web/jobs.py`) all go through it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from maillink.crm.base import CRMError
from maillink.daemon.schedule import Schedule
from maillink.errors import ConfigError
from maillink.providers.base import MailProvider, Page
from maillink.store import Store, accounts, leases
from maillink.store.accounts import Account
from maillink.store.leases import FencedStore, Lease, LeaseLost, LeaseState
from maillink.sync import CrmRetry, RoundResult, Syncer, poll_crm_changes

if TYPE_CHECKING:
    from maillink.app import App

log = logging.getLogger("maillink.daemon")

HELD_ELSEWHERE = "another daemon is syncing it"
LOST = (
    "another daemon took the mailbox over (this job stalled past its lease); "
    "run the same command again to resume"
)
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def is_conflict(exc: BaseException) -> bool:
    """A write that lost a race with another daemon's (the same email reaching two mailboxes,
    the same person cached twice): the round is worth running again at once, not backing off."""
    if isinstance(exc, IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:  # the database dropped the connection: a fresh one now
            return True
        return getattr(exc.orig, "sqlstate", None) in CONFLICT_SQLSTATES
    return False


def _now() -> datetime:
    return datetime.now(UTC)


def schedule_of(app: App) -> Schedule:
    sync = app.settings.sync
    return Schedule(
        interval=float(sync.interval_seconds),
        jitter=float(sync.jitter_seconds),
        max_backoff=float(sync.max_backoff_seconds),
    )


class LeaseKeeper:
    """Renews the leases this process holds, in a background thread, every third of their length.

    A lease that cannot be renewed (it expired, another daemon took it) has its `lost` event set:
    the round working on it stops after the page in hand, and its writes are refused anyway.
    """

    def __init__(
        self,
        store: Store,
        duration: timedelta,
        *,
        clock: Callable[[], datetime] = _now,
        on_lost: Callable[[Lease], None] = lambda lease: None,
    ) -> None:
        self.store = store
        self.duration = duration
        self.clock = clock
        self.on_lost = on_lost
        self._held: dict[int, tuple[Lease, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maillink-leases", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def hold(self, lease: Lease) -> threading.Event:
        """Renew `lease` from now on; returns the event set when it is lost (the same event
        when the lease is held already)."""
        with self._lock:
            held = self._held.get(lease.account_id)
            if held is not None and held[0] == lease:
                return held[1]
            lost = threading.Event()
            self._held[lease.account_id] = (lease, lost)
            return lost

    def drop(self, lease: Lease) -> None:
        with self._lock:
            held = self._held.get(lease.account_id)
            if held is not None and held[0] == lease:
                del self._held[lease.account_id]

    def held(self) -> list[Lease]:
        with self._lock:
            return [lease for lease, _ in self._held.values()]

    def renew_all(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for lease, lost in held:
            if lost.is_set():
                continue
            try:
                with self.store.transaction() as conn:
                    leases.renew(conn, lease, now=self.clock(), duration=self.duration)
            except LeaseLost:
                with self._lock:
                    still_held = self._held.get(lease.account_id, (None, None))[0] == lease
                if still_held:  # not a lease its round released since the loop began
                    lost.set()
                    self.on_lost(lease)
            except SQLAlchemyError as exc:  # the store is away: the lease may expire meanwhile
                log.warning(
                    "cannot renew a lease: %s",
                    type(exc).__name__,
                    extra={"account_id": lease.account_id},
                )

    def _run(self) -> None:
        every = max(self.duration.total_seconds() / 3, 0.2)
        while not self._stop.wait(every):
            self.renew_all()


def either(should_stop: Callable[[], bool], lost: threading.Event) -> Callable[[], bool]:
    """Stop when asked to, or once the lease is lost."""
    return lambda: should_stop() or lost.is_set()


def held_elsewhere(store: Store, account: Account) -> RoundResult:
    """The result of a mailbox skipped because a live process holds it: who, until when."""
    with store.engine.connect() as conn:
        state = leases.state(conn, account.id)
    return RoundResult(
        account=account.email,
        skipped=HELD_ELSEWHERE,
        held_by=state.owner if state is not None else None,
        held_until=state.expires_at if state is not None else None,
    )


def finish(
    store: Store,
    lease: Lease,
    result: RoundResult | None,
    schedule: Schedule,
    *,
    now: datetime,
    rng: random.Random | None = None,
    conflict: bool = False,
) -> bool:
    """Release the mailbox with its next run: an interval after its due time after a good
    round (`Schedule.after_success`), backoff after an error, at once after a round stopped
    halfway, not run (`result` None) or that lost a race with another daemon's write
    (`conflict`). The round's outcome is recorded on the mailbox
    (`accounts.synced`) in the same transaction."""
    failures = lease.failures
    if result is None or result.stopped or conflict:
        next_run = now
    elif result.error is not None:
        failures += 1
        next_run = schedule.after_failure(now, failures, retry_after=result.retry_after, rng=rng)
    else:
        failures = 0
        next_run = schedule.after_success(now, rng, due=lease.due_at)
    with store.transaction() as conn:
        released = leases.release(conn, lease, next_run_at=next_run, failures=failures)
        if released and result is not None:
            # The round's `last_sync_at`/`last_error`, in the release's transaction: an idle
            # round writes nothing else.
            accounts.synced(conn, lease.account_id, result.error)
        return released


@dataclass
class Holding:
    """A mailbox held under its lease: the syncer to use (its writes fenced) and when to stop.

    `syncer` is None when the mailbox could not be taken (a live process holds it). The holder
    sets `result` (and `conflict` after a write that lost a race), which gives the mailbox its
    next run when the hold ends; `lost` is set when the lease was lost meanwhile (nothing more
    was written, and the mailbox is not released: another process has it).
    """

    account: Account
    syncer: Syncer | None
    should_stop: Callable[[], bool]
    result: RoundResult | None = None
    lease: Lease | None = None
    lost: bool = False
    conflict: bool = False
    start: accounts.RoundStart | None = None  # the round's opening read, made with the mailbox

    def record_error(self, error: str) -> RoundResult:
        """`error` as this round's result, recorded on the mailbox (fenced)."""
        assert self.syncer is not None
        self.result = RoundResult(account=self.account.email, error=error)
        with self.syncer.store.transaction() as conn:
            accounts.synced(conn, self.account.id, error)
        return self.result

    def sync(
        self,
        provider_for: Callable[[Account], MailProvider],
        *,
        first: bool = False,
        retry: CrmRetry | None = None,
        on_page: Callable[[Page, RoundResult], None] | None = None,
    ) -> RoundResult:
        """The round: a full listing when `first`, else incremental; a provider that cannot be
        built (configuration, a token the keys cannot read) is the mailbox's error."""
        assert self.syncer is not None
        try:
            provider = provider_for(self.account)
        except ConfigError as exc:
            return self.record_error(str(exc))
        if first:
            self.result = self.syncer.backfill(
                self.account, provider, on_page=on_page, should_stop=self.should_stop
            )
        else:
            start, self.start = self.start, None  # read once: a second round reads again
            self.result = self.syncer.run(
                self.account,
                provider,
                on_page=on_page,
                should_stop=self.should_stop,
                retry=retry,
                start=start,
            )
        return self.result


class Rounds:
    """This process's mailbox rounds: leases taken under `owner`, renewed by one `LeaseKeeper`
    (started and stopped by `with Rounds(app) as rounds:` or `start`/`stop`)."""

    def __init__(
        self,
        app: App,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
        on_lost: Callable[[Lease], None] = lambda lease: None,
        on_takeover: Callable[[Lease], None] = lambda lease: None,
    ) -> None:
        self.app = app
        self.store: Store = app.store
        self.owner = owner or leases.daemon_id()
        self.duration = timedelta(seconds=app.settings.sync.lease_seconds)
        self.schedule = schedule_of(app)
        self.clock = clock
        self.rng = rng
        self.on_takeover = on_takeover
        self.keeper = LeaseKeeper(self.store, self.duration, clock=clock, on_lost=on_lost)
        self.gone = leases.GoneHolders()  # this process's look at holders that are gone

    def start(self) -> Rounds:
        self.keeper.start()
        return self

    def stop(self) -> None:
        self.keeper.stop()

    def __enter__(self) -> Rounds:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- taking leases -------------------------------------------------------------------------
    def acquire(
        self,
        *,
        limit: int,
        exclude: set[int] | frozenset[int] = frozenset(),
        account_ids: list[int] | None = None,
        due_only: bool = True,
    ) -> list[Lease]:
        """Up to `limit` free mailboxes (due ones only with `due_only`); takeovers of a holder
        that is gone (or whose lease expired) are logged."""
        with self.store.transaction() as conn:
            got = leases.acquire(
                conn,
                self.owner,
                now=self.clock(),
                duration=self.duration,
                limit=limit,
                exclude=exclude,
                due_only=due_only,
                account_ids=account_ids,
                seen=self.gone,
            )
        for lease in got:
            if lease.taken_over:
                self.on_takeover(lease)
                log.info(
                    "mailbox taken over from %s (its process is gone or its lease expired)",
                    lease.previous_owner,
                    extra={"event": "takeover", "account_id": lease.account_id},
                )
        return got

    def take(
        self,
        account: Account,
        *,
        wait: float | None = 0.0,
        poll: float = 0.5,
        should_stop: Callable[[], bool] = lambda: False,
        on_held: Callable[[LeaseState], None] | None = None,
    ) -> Lease | None:
        """`account`'s lease, due or not; while a live process holds it, waits up to `wait`
        seconds (None: until `should_stop`) for its round to end, telling `on_held` who holds
        it. None when it was not had (or the mailbox is not active)."""
        deadline = None if wait is None else time.monotonic() + wait
        with self.store.transaction() as conn:
            leases.ensure_one(conn, account.id, self.clock())
        while True:
            got = self.acquire(limit=1, account_ids=[account.id], due_only=False)
            if got:
                return got[0]
            if should_stop() or (deadline is not None and time.monotonic() >= deadline):
                return None
            with self.store.engine.connect() as conn:
                state = leases.state(conn, account.id)
                current = accounts.get_by_id(conn, account.id)
            if current is None or current.status != accounts.ACTIVE:
                return None  # not a mailbox to sync: nobody will ever give it
            if on_held is not None and state is not None and state.owner is not None:
                on_held(state)
            time.sleep(poll)

    # -- holding them --------------------------------------------------------------------------
    @contextmanager
    def hold(
        self,
        account: Account,
        *,
        lease: Lease | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        wait: float | None = 0.0,
        poll: float = 0.5,
        on_held: Callable[[LeaseState], None] | None = None,
        start: accounts.RoundStart | None = None,
    ) -> Iterator[Holding]:
        """Hold `account` for a round (or a one-off job): its `lease` if the caller took it,
        else taken now (see `take`). The holding's syncer writes through a store fenced by the
        lease; `LeaseLost` raised by the work ends the hold (`lost`, nothing released); else
        the mailbox is released with its next run, from `result`. `start`: the round's opening
        read, made by the caller under the lease (`accounts.round_start`)."""
        if lease is None:
            lease = self.take(
                account, wait=wait, poll=poll, should_stop=should_stop, on_held=on_held
            )
        if lease is None:
            yield Holding(account, None, should_stop)
            return
        lost = self.keeper.hold(lease)
        syncer = self.app.syncer(FencedStore(self.store, lease), record_sync=False)
        holding = Holding(account, syncer, either(should_stop, lost), lease=lease, start=start)
        try:
            yield holding
        except LeaseLost:
            holding.lost = True
            holding.result = RoundResult(account=account.email, error=LOST)
            return
        finally:
            self.keeper.drop(lease)  # released below: no renewal may race the release
        if holding.result is not None and lease.taken_over:
            holding.result.taken_over_from = lease.previous_owner
        self.release(lease, holding.result, conflict=holding.conflict)

    def release(self, lease: Lease, result: RoundResult | None, *, conflict: bool = False) -> bool:
        """Give the mailbox back with its next run (`finish`); False when it was not ours any
        more or the store was away (the lease then expires on its own)."""
        extra = {"account_id": lease.account_id}
        try:
            released = finish(
                self.store,
                lease,
                result,
                self.schedule,
                now=self.clock(),
                rng=self.rng,
                conflict=conflict,
            )
        except SQLAlchemyError as exc:
            log.warning("cannot release the mailbox: %s", type(exc).__name__, extra=extra)
            return False
        if not released:
            log.warning("lease lost before the mailbox was released", extra=extra)
        return released


@contextmanager
def hold_mailbox(
    app: App,
    account: Account,
    *,
    should_stop: Callable[[], bool],
    wait: float | None = None,
    poll: float = 0.5,
) -> Iterator[Holding]:
    """Hold `account`'s lease for a one-off job (a backfill), as a daemon holds it for a round:
    the daemons leave the mailbox alone meanwhile, and the job's writes are fenced like theirs.
    Waits up to `wait` seconds (default two lease lengths: a crashed holder's lease expires
    meanwhile) for a daemon's round to end."""
    with Rounds(app) as rounds:
        if wait is None:
            wait = 2 * rounds.duration.total_seconds()
        with rounds.hold(account, should_stop=should_stop, wait=wait, poll=poll) as holding:
            yield holding


def sync_round(
    app: App,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    owner: str | None = None,
    retry: CrmRetry | None = None,
) -> list[RoundResult]:
    """Poll the CRM's changes once, then one incremental round per active mailbox, now.

    Each mailbox is synced under its lease; one a running process holds is skipped (`skipped`,
    with `held_by` and `held_until`); one held by a process of this host that is gone is taken
    over at once. With `retry`, each round tries transient CRM failures again (`CrmRetry`).
    One mailbox's failure (revoked grant, provider outage, a token the key cannot decrypt) is
    recorded on that mailbox and never stops the others.
    """
    with contextlib.suppress(CRMError):  # stale caches expire on their own; linking goes on
        poll_crm_changes(app.store, app.crm)
    targets = app.store_accounts()
    results: list[RoundResult] = []
    with Rounds(app, owner=owner) as rounds:
        for account in targets:
            if should_stop():
                break
            with rounds.hold(account, should_stop=should_stop) as job:
                if job.syncer is not None:
                    job.sync(app.provider_for, retry=retry)
            if job.syncer is None or job.lost or job.result is None:
                results.append(held_elsewhere(app.store, account))
            else:
                results.append(job.result)
    return results
