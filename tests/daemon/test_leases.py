"""Leases on SQLite and PostgreSQL: one holder per mailbox, expiry, renewal, the generation fence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from maillink import holders
from maillink.store import Store, accounts, leases
from maillink.store.leases import FencedStore, LeaseLost
from maillink.store.schema import accounts as account_rows
from maillink.store.schema import cursors
from maillink.store.schema import leases as lease_rows

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def _mailboxes(store: Store, count: int, status: str = accounts.ACTIVE) -> list[int]:
    ids = []
    with store.transaction() as conn:
        for i in range(count):
            account = accounts.upsert(conn, f"rep{i}-{status}@acme.example", "gmail", "t", "s")
            if status != accounts.ACTIVE:
                accounts.set_status(conn, account.id, status)
            ids.append(account.id)
        leases.ensure(conn, T0)
    return ids


def _acquire(store: Store, owner: str, now: datetime = T0, limit: int = 10) -> list[leases.Lease]:
    with store.transaction() as conn:
        return leases.acquire(conn, owner, now=now, duration=LEASE, limit=limit)


def test_a_due_mailbox_is_acquired_once_with_a_new_generation(store: Store) -> None:
    (account_id,) = _mailboxes(store, 1)
    (lease,) = _acquire(store, "daemon-a")
    assert (lease.account_id, lease.owner, lease.generation) == (account_id, "daemon-a", 1)
    assert not lease.taken_over
    assert _acquire(store, "daemon-b") == []  # held: nobody else gets it
    assert _acquire(store, "daemon-a") == []  # not even its holder, twice


def test_a_mailbox_not_yet_due_is_left_alone(store: Store) -> None:
    _mailboxes(store, 1)
    (lease,) = _acquire(store, "daemon-a")
    with store.transaction() as conn:
        assert leases.release(conn, lease, next_run_at=T0 + timedelta(minutes=2), failures=0)
    assert _acquire(store, "daemon-b", now=T0 + timedelta(minutes=1)) == []
    (again,) = _acquire(store, "daemon-b", now=T0 + timedelta(minutes=2))
    assert (again.owner, again.generation, again.taken_over) == ("daemon-b", 2, False)


def test_an_expired_lease_is_taken_over_with_the_next_generation(store: Store) -> None:
    _mailboxes(store, 1)
    (dead,) = _acquire(store, "daemon-a")
    assert _acquire(store, "daemon-b", now=T0 + LEASE - timedelta(seconds=1)) == []
    (taken,) = _acquire(store, "daemon-b", now=T0 + LEASE)
    assert taken.generation == dead.generation + 1
    assert taken.taken_over and taken.previous_owner == "daemon-a"


def test_paused_and_needs_reauth_mailboxes_are_skipped(store: Store) -> None:
    active = _mailboxes(store, 2)
    _mailboxes(store, 1, accounts.PAUSED)
    _mailboxes(store, 1, accounts.NEEDS_REAUTH)
    assert sorted(lease.account_id for lease in _acquire(store, "daemon-a")) == active


def test_the_most_overdue_mailboxes_come_first_up_to_the_limit(store: Store) -> None:
    ids = _mailboxes(store, 3)
    with store.transaction() as conn:
        for lease in leases.acquire(conn, "x", now=T0, duration=LEASE, limit=3):
            late = {ids[0]: 3, ids[1]: 1, ids[2]: 2}[lease.account_id]
            leases.release(conn, lease, next_run_at=T0 - timedelta(minutes=late), failures=0)
    got = _acquire(store, "daemon-a", limit=2)
    assert [lease.account_id for lease in got] == [ids[0], ids[2]]


def test_the_fence_refuses_a_stale_generation_and_nothing_is_written(store: Store) -> None:
    (account_id,) = _mailboxes(store, 1)
    (stale,) = _acquire(store, "daemon-a")
    _acquire(store, "daemon-b", now=T0 + LEASE)  # daemon-a stalled past its expiry
    fenced = FencedStore(store, stale, clock=lambda: T0 + LEASE + timedelta(seconds=1))
    with pytest.raises(LeaseLost), fenced.transaction() as conn:
        accounts.set_cursor(conn, account_id, "history:42")
    with store.engine.connect() as conn:
        assert conn.execute(select(cursors)).all() == []


def test_the_fence_lets_the_holder_write(store: Store) -> None:
    (account_id,) = _mailboxes(store, 1)
    (lease,) = _acquire(store, "daemon-a")
    with FencedStore(store, lease, clock=lambda: T0 + timedelta(seconds=5)).transaction() as conn:
        accounts.set_cursor(conn, account_id, "history:42")
    with store.engine.connect() as conn:
        assert accounts.get_cursor(conn, account_id) == "history:42"


def test_an_expired_lease_fences_even_before_anyone_takes_it(store: Store) -> None:
    (account_id,) = _mailboxes(store, 1)
    (lease,) = _acquire(store, "daemon-a")
    late = FencedStore(store, lease, clock=lambda: T0 + LEASE)
    with pytest.raises(LeaseLost), late.transaction() as conn:
        accounts.set_cursor(conn, account_id, "history:42")


def test_renewal_extends_the_lease_and_fails_once_it_moved(store: Store) -> None:
    _mailboxes(store, 1)
    (lease,) = _acquire(store, "daemon-a")
    with store.transaction() as conn:
        leases.renew(conn, lease, now=T0 + timedelta(seconds=20), duration=LEASE)
    assert _acquire(store, "daemon-b", now=T0 + LEASE) == []  # renewed until T0+50s
    _acquire(store, "daemon-b", now=T0 + timedelta(seconds=50))
    with pytest.raises(LeaseLost), store.transaction() as conn:
        leases.renew(conn, lease, now=T0 + timedelta(seconds=51), duration=LEASE)


def test_release_schedules_the_next_run_but_keeps_a_wake_up_that_came_meanwhile(
    store: Store,
) -> None:
    (a, b) = _mailboxes(store, 2)
    got = {lease.account_id: lease for lease in _acquire(store, "daemon-a")}
    with store.transaction() as conn:
        assert leases.wake(conn, b, T0 + timedelta(seconds=3))  # a push during b's round
        for lease in got.values():
            leases.release(conn, lease, next_run_at=T0 + timedelta(minutes=2), failures=1)
        state = leases.states(conn)
    assert state[a].next_run_at == T0 + timedelta(minutes=2)
    assert state[b].next_run_at == T0 + timedelta(seconds=3)
    assert state[a].owner is None and state[a].failures == 1


def test_release_by_a_daemon_that_lost_the_lease_changes_nothing(store: Store) -> None:
    (account_id,) = _mailboxes(store, 1)
    (stale,) = _acquire(store, "daemon-a")
    (fresh,) = _acquire(store, "daemon-b", now=T0 + LEASE)
    with store.transaction() as conn:
        assert not leases.release(conn, stale, next_run_at=T0, failures=0)
        assert leases.states(conn)[account_id].owner == "daemon-b"


def test_a_connected_mailbox_has_its_lease_row_at_once_ahead_of_the_overdue_ones(
    store: Store,
) -> None:
    (old,) = _mailboxes(store, 1)
    with store.transaction() as conn:  # its first round done, overdue since a minute
        (lease,) = leases.acquire(conn, "x", now=T0, duration=LEASE, limit=1)
        leases.release(conn, lease, next_run_at=T0 - timedelta(minutes=1), failures=0)
    with store.transaction() as conn:
        late = accounts.upsert(conn, "late@acme.example", "gmail", "t", "s")
        assert leases.states(conn)[late.id].next_run_at == accounts.AT_ONCE
        assert leases.ensure(conn, T0) == 0  # nothing left to add
    got = _acquire(store, "daemon-a", limit=1)
    assert [lease.account_id for lease in got] == [late.id]  # a person waits for its first sync
    assert [lease.account_id for lease in _acquire(store, "daemon-a")] == [old]


def _without_lease_rows(store: Store) -> None:
    """Mailboxes as an earlier version left them: no lease row."""
    with store.transaction() as conn:
        conn.execute(lease_rows.delete())


def test_ensure_gives_mailboxes_of_an_earlier_version_their_row_in_its_place(store: Store) -> None:
    active = _mailboxes(store, 2)
    (paused,) = _mailboxes(store, 1, accounts.PAUSED)
    _without_lease_rows(store)
    with store.transaction() as conn:
        assert leases.ensure(conn, T0) == 3
        assert leases.ensure(conn, T0) == 0
        state = leases.states(conn)
    assert {i: state[i].next_run_at for i in (*active, paused)} == {
        active[0]: T0,
        active[1]: T0,
        paused: accounts.PARKED,
    }


def test_a_one_off_round_gives_only_its_own_mailbox_a_lease_row(store: Store) -> None:
    ids = _mailboxes(store, 3)
    _without_lease_rows(store)
    with store.transaction() as conn:
        leases.ensure_one(conn, ids[1], T0)
        leases.ensure_one(conn, ids[1], T0)  # a second time: left as it is
        assert set(leases.states(conn)) == {ids[1]}
    assert [lease.account_id for lease in _acquire(store, "sync-once")] == [ids[1]]


# -- a mailbox that is not active is out of the due range (issue 11) -----------------------------


def test_a_paused_mailbox_leaves_the_due_range_and_is_due_at_once_when_resumed(
    store: Store,
) -> None:
    (paused, other) = _mailboxes(store, 2)
    with store.transaction() as conn:
        accounts.set_status(conn, paused, accounts.PAUSED)
        assert leases.states(conn)[paused].next_run_at == accounts.PARKED
    (taken,) = _acquire(store, "daemon-a")
    assert taken.account_id == other
    later = T0 + timedelta(hours=1)
    with store.transaction() as conn:
        leases.release(conn, taken, next_run_at=later + timedelta(hours=1), failures=0)

    with store.transaction() as conn:
        accounts.set_status(conn, paused, accounts.ACTIVE, now=later)  # `accounts resume`
        assert leases.states(conn)[paused].next_run_at == later
    assert _acquire(store, "daemon-a", now=later - timedelta(seconds=1)) == []
    assert [lease.account_id for lease in _acquire(store, "daemon-a", now=later)] == [paused]


def test_a_mailbox_that_needs_reauthorisation_leaves_the_due_range_until_reconnected(
    store: Store,
) -> None:
    (account_id,) = _mailboxes(store, 1)
    (lease,) = _acquire(store, "daemon-a")
    with store.transaction() as conn:  # its round meets a revoked grant, then releases it
        accounts.set_status(conn, account_id, accounts.NEEDS_REAUTH, "invalid_grant")
        assert leases.release(conn, lease, next_run_at=T0 + timedelta(minutes=1), failures=0)
        assert leases.states(conn)[account_id].next_run_at == accounts.PARKED  # kept
    assert _acquire(store, "daemon-b", now=T0 + timedelta(days=30)) == []

    with store.transaction() as conn:  # reconnected: a new token, active again, due now
        accounts.upsert(conn, "rep0-active@acme.example", "gmail", "new", "s")
        due = leases.states(conn)[account_id].next_run_at
    assert T0 < due < accounts.PARKED
    (again,) = _acquire(store, "daemon-b", now=due)
    assert again.generation == lease.generation + 1


def test_ensure_puts_back_in_line_leases_whose_place_does_not_match_the_status(
    store: Store,
) -> None:
    """Statuses written without the store's functions (an earlier version): the daemon's
    start (and its hourly check) puts their leases where they belong."""
    (active, paused) = _mailboxes(store, 2)
    with store.transaction() as conn:
        conn.execute(
            account_rows.update().where(account_rows.c.id == paused).values(status=accounts.PAUSED)
        )
        conn.execute(
            lease_rows.update()
            .where(lease_rows.c.account_id == active)
            .values(next_run_at=accounts.PARKED)
        )
        leases.ensure(conn, T0)
        state = leases.states(conn)
    assert (state[active].next_run_at, state[paused].next_run_at) == (T0, accounts.PARKED)


# -- the acquisition's statements (issue 11) -----------------------------------------------------


def _statements(store: Store, call: Callable[[], object]) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return seen


def test_the_mailboxes_taken_are_taken_with_one_compare_and_set_update(store: Store) -> None:
    _mailboxes(store, 5)
    seen = leases.GoneHolders()
    with store.transaction() as conn:  # the first look at the holders of this host
        leases.acquire(conn, "daemon-a", now=T0, duration=LEASE, limit=1, seen=seen)
    got: list[leases.Lease] = []

    def take() -> None:
        with store.transaction() as conn:
            got.extend(leases.acquire(conn, "daemon-a", now=T0, duration=LEASE, limit=3, seen=seen))

    statements = _statements(store, take)
    assert len(got) == 3 and {lease.generation for lease in got} == {1}
    assert [s.split()[0] for s in statements] == ["SELECT", "UPDATE"], statements
    assert "RETURNING" in statements[1]


def test_two_daemons_on_postgresql_never_hold_the_same_mailbox(pg_url: str) -> None:
    first = Store.open(pg_url)
    second = Store.open(pg_url, upgrade=False)
    try:
        ids = _mailboxes(first, 40)
        got: dict[str, list[leases.Lease]] = {"a": [], "b": []}
        start = threading.Barrier(2)

        def grab(name: str, store: Store) -> None:
            start.wait()
            for _ in range(40):
                with store.transaction() as conn:
                    got[name] += leases.acquire(conn, name, now=T0, duration=LEASE, limit=3)

        threads = [
            threading.Thread(target=grab, args=(n, s)) for n, s in (("a", first), ("b", second))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        held = Counter(lease.account_id for lease in got["a"] + got["b"])
        assert sorted(held) == sorted(ids)
        assert set(held.values()) == {1}
        assert got["a"] and got["b"]
    finally:
        first.close()
        second.close()


def test_a_row_locked_by_one_daemon_is_skipped_not_waited_for(pg_url: str) -> None:
    first = Store.open(pg_url)
    second = Store.open(pg_url, upgrade=False)
    try:
        ids = _mailboxes(first, 2)
        with first.transaction() as conn:  # daemon-a is in the middle of acquiring
            (mine,) = leases.acquire(conn, "daemon-a", now=T0, duration=LEASE, limit=1)
            (theirs,) = _acquire(second, "daemon-b")  # returns at once, with the other one
        assert {mine.account_id, theirs.account_id} == set(ids)
    finally:
        first.close()
        second.close()


# -- holders that are gone: a process of this host that no longer runs --------------------------


def _dead_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


needs_proc = pytest.mark.skipif(
    holders.start_time(os.getpid()) is None, reason="no /proc: holders are never judged"
)


@needs_proc
def test_the_holder_id_names_this_host_pid_and_start_time() -> None:
    holder = holders.parse(leases.daemon_id())
    assert holder.host == socket.gethostname()[: holders.HOST_CHARS]
    assert holder.pid == os.getpid()
    assert holder.start == holders.start_time(os.getpid())
    assert not holders.is_gone(holder.raw)  # this very process


@needs_proc
def test_a_lease_held_by_a_dead_process_of_this_host_is_free_at_once(store: Store) -> None:
    (account_id,) = _mailboxes(store, 1)
    dead = holders.holder_id(pid=_dead_pid(), start=12345)
    (crashed,) = _acquire(store, dead)
    (taken,) = _acquire(store, "daemon-b", now=T0 + timedelta(seconds=1))  # long before expiry
    assert (taken.account_id, taken.generation) == (account_id, crashed.generation + 1)
    assert taken.taken_over and taken.previous_owner == dead
    # The generation fence still applies: the dead holder's generation can write nothing.
    with pytest.raises(LeaseLost), FencedStore(store, crashed, clock=lambda: T0).transaction() as c:
        accounts.set_cursor(c, account_id, "history:42")


@needs_proc
def test_a_reused_pid_with_another_start_time_is_free_and_the_right_one_is_held(
    store: Store,
) -> None:
    _mailboxes(store, 1)
    me, started = os.getpid(), holders.start_time(os.getpid())
    assert started is not None
    reused = holders.holder_id(pid=me, start=started + 1)  # the pid runs, but not that process
    assert holders.is_gone(reused)
    (first,) = _acquire(store, reused)
    (second,) = _acquire(store, "daemon-b", now=T0 + timedelta(seconds=1))
    assert second.previous_owner == reused

    alive = holders.holder_id(pid=me, start=started)
    assert not holders.is_gone(alive)
    with store.transaction() as conn:
        assert leases.release(conn, second, next_run_at=T0, failures=0)
    (held,) = _acquire(store, alive, now=T0 + timedelta(seconds=2))
    assert _acquire(store, "daemon-c", now=T0 + timedelta(seconds=3)) == []
    assert held.owner == alive and first.generation < held.generation


@needs_proc
def test_holders_of_other_hosts_and_older_ids_are_never_judged_by_pid(store: Store) -> None:
    _mailboxes(store, 3)
    pid = _dead_pid()
    mine = holders.holder_id(pid=pid, start=1)
    other_host = mine.replace(socket.gethostname()[: holders.HOST_CHARS], "elsewhere", 1)
    other_kernel = mine[:-8] + ("0" * 8 if not mine.endswith("0" * 8) else "1" * 8)
    older = f"{socket.gethostname()}-{pid}-abcdef"  # written by an earlier version
    for owner in (other_host, other_kernel, older):
        assert not holders.is_gone(owner), owner
        assert len(_acquire(store, owner, limit=1)) == 1
    assert _acquire(store, "daemon-b", now=T0 + timedelta(seconds=1)) == []
    assert len(_acquire(store, "daemon-b", now=T0 + LEASE)) == 3  # they expire as before


def test_a_zombie_or_a_missing_proc_entry_is_judged_only_on_this_host(tmp_path: Path) -> None:
    """`/proc` as a folder: a zombie (state Z) is gone; an unreadable stat means alive."""
    proc = tmp_path / "proc"
    (proc / "sys/kernel/random").mkdir(parents=True)
    (proc / "sys/kernel/random/boot_id").write_text("boot\n")
    (proc / "1").mkdir()
    (proc / "1/stat").write_text("1 (init) S" + " 0" * 40)
    (proc / "self/ns").mkdir(parents=True)
    (proc / "self/ns/pid").write_text("")
    key = holders._key(proc)
    assert key is not None
    host = socket.gethostname()[: holders.HOST_CHARS]

    def stat(pid: int, state: str, start: int) -> None:
        fields = [state] + ["0"] * 18 + [str(start)] + ["0"] * 10
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "stat").write_text(f"{pid} (a (b) c) " + " ".join(fields))

    stat(10, "Z", 500)
    stat(11, "S", 500)
    (proc / "12").mkdir()
    (proc / "12/stat").mkdir()  # unreadable as a file: cannot tell

    def holder(pid: int) -> str:
        return f"{host}-{pid}-abcdef-t500-{key}"

    assert holders.is_gone(holder(10), proc)  # a zombie
    assert not holders.is_gone(holder(11), proc)  # running with that start time
    assert not holders.is_gone(holder(12), proc)  # cannot tell: alive
    assert holders.is_gone(holder(13), proc)  # no such pid
    assert not holders.is_gone(f"elsewhere-13-abcdef-t500-{key}", proc)  # another host


@needs_proc
def test_holders_that_are_gone_are_looked_for_once_every_few_seconds_per_process(
    store: Store,
) -> None:
    (first, second) = _mailboxes(store, 2)
    seen = leases.GoneHolders()
    dead = holders.holder_id(pid=_dead_pid(), start=12345)
    (crashed,) = _acquire(store, dead, limit=1)  # it crashed holding the first mailbox

    def take(now: datetime, limit: int = 1) -> list[leases.Lease]:
        with store.transaction() as conn:
            return leases.acquire(conn, "daemon-b", now=now, duration=LEASE, limit=limit, seen=seen)

    looks: list[list[leases.Lease]] = []
    statements = _statements(store, lambda: looks.append(take(T0)))  # never looked: at once
    assert [lease.account_id for lease in looks[0]] == [first]
    assert len(statements) == 3  # the holders that might be gone, the due leases, the update

    # The second mailbox's holder dies after that look: not seen until the next look, 5 s on.
    with store.transaction() as conn:
        leases.release(conn, looks[0][0], next_run_at=T0 + timedelta(hours=1), failures=0)
    (crashed_too,) = _acquire(store, holders.holder_id(pid=_dead_pid(), start=1), limit=1)
    assert crashed_too.account_id == second and crashed.account_id == first
    soon = T0 + timedelta(seconds=leases.GONE_EVERY_SECONDS - 1)
    quiet = _statements(store, lambda: looks.append(take(soon)))
    assert looks[-1] == [] and len(quiet) == 1  # no look at the holders: the due leases only
    (taken,) = take(T0 + timedelta(seconds=leases.GONE_EVERY_SECONDS))
    assert taken.account_id == second and taken.previous_owner == crashed_too.owner


@needs_proc
def test_a_one_off_round_takes_over_its_mailbox_from_a_gone_holder_at_once(store: Store) -> None:
    (account_id,) = _mailboxes(store, 1)
    seen = leases.GoneHolders()
    with store.transaction() as conn:  # the process looked a moment ago: nobody was gone
        leases.acquire(conn, "me", now=T0, duration=LEASE, limit=1, seen=seen, account_ids=[])
        assert seen.found(T0, set(), everywhere=True) == frozenset()
    dead = holders.holder_id(pid=_dead_pid(), start=12345)
    _acquire(store, dead)
    with store.transaction() as conn:
        (taken,) = leases.acquire(
            conn,
            "me",
            now=T0 + timedelta(seconds=1),
            duration=LEASE,
            limit=1,
            due_only=False,
            account_ids=[account_id],
            seen=seen,
        )
    assert taken.previous_owner == dead
