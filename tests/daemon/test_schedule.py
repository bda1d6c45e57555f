"""When mailboxes run: interval and jitter, backoff after errors, skipped mailboxes, and one
failing mailbox that never delays the others."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.daemon.support import Team, rep, wait_for, write_daemon_config
from tests.e2e.support import DOMAIN, NOW, connect

from maillink.app import App
from maillink.config import load_settings
from maillink.daemon import Daemon, Schedule
from maillink.daemon.rounds import finish, is_conflict
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts, leases
from maillink.store.leases import Lease
from maillink.sync import RoundResult

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_a_good_round_is_followed_by_the_interval_plus_at_most_the_jitter() -> None:
    schedule = Schedule(interval=120, jitter=15)
    rng = random.Random(5)
    delays = [(schedule.after_success(T0, rng) - T0).total_seconds() for _ in range(500)]
    assert all(120 <= d <= 135 for d in delays)
    assert max(delays) - min(delays) > 10  # spread, not lockstep


def test_without_jitter_the_next_run_is_exactly_the_interval() -> None:
    assert Schedule(interval=120).after_success(T0) == T0 + timedelta(seconds=120)


def test_a_mailbox_on_time_keeps_its_rhythm_whatever_its_rounds_last() -> None:
    """Counted from the due time, not the round's end: a round of 20 s or one picked up 3 s
    late does not push the next; the jitter moves it by at most half either way."""
    schedule = Schedule(interval=120, jitter=10)
    rng = random.Random(7)
    ends = [T0 + timedelta(seconds=s) for s in (0.2, 3, 20)]
    nexts = [schedule.after_success(end, rng, due=T0) for end in ends for _ in range(200)]
    offsets = [(n - T0).total_seconds() for n in nexts]
    assert all(115 <= o <= 125 for o in offsets)
    assert abs(sum(offsets) / len(offsets) - 120) < 1  # a round every interval, on average


def test_a_mailbox_that_fell_behind_starts_a_new_rhythm_from_the_rounds_end() -> None:
    schedule = Schedule(interval=120, jitter=10)
    late = T0 + timedelta(seconds=300)  # due at T0, its round ended 5 minutes later
    after = (schedule.after_success(late, random.Random(3), due=T0) - late).total_seconds()
    assert 120 <= after <= 130  # never a burst of rounds to catch up


def test_backoff_doubles_after_each_failed_round_up_to_the_cap() -> None:
    schedule = Schedule(interval=120, max_backoff=600)
    assert [schedule.backoff(n) for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]
    assert schedule.backoff(10_000) == 600  # no overflow after months of failures
    assert Schedule(interval=5).backoff(1) == 5  # never slower than a healthy mailbox at first


def test_a_providers_retry_after_is_honoured_even_past_the_cap() -> None:
    schedule = Schedule(interval=120, max_backoff=600)
    assert schedule.after_failure(T0, 1, retry_after=900) == T0 + timedelta(seconds=900)
    assert schedule.after_failure(T0, 3, retry_after=10) == T0 + timedelta(seconds=240)


def test_failure_backoff_keeps_the_jitter_bounds() -> None:
    schedule = Schedule(interval=120, jitter=15, max_backoff=600)
    rng = random.Random(1)
    for failures in range(1, 8):
        delay = (schedule.after_failure(T0, failures, rng=rng) - T0).total_seconds()
        assert schedule.backoff(failures) <= delay <= schedule.backoff(failures) + 15


def _lease(failures: int = 0) -> Lease:
    return Lease(account_id=1, owner="me", generation=1, acquired_at=T0, failures=failures)


@pytest.mark.parametrize(
    ("result", "conflict", "failures", "after"),
    [
        (RoundResult("a"), False, 0, 120),
        (RoundResult("a", error="boom"), False, 3, 240),
        (RoundResult("a", stopped=True), False, 2, 0),
        (RoundResult("a", error="lost a race"), True, 2, 0),
        (None, False, 2, 0),
    ],
    ids=["ok", "error", "stopped", "conflict", "not-run"],
)
def test_a_released_mailbox_gets_its_next_run_from_the_round(
    sqlite_store: object, result: RoundResult | None, conflict: bool, failures: int, after: int
) -> None:
    from maillink.store import Store

    assert isinstance(sqlite_store, Store)
    with sqlite_store.transaction() as conn:
        accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        leases.ensure(conn, T0)
        (lease,) = leases.acquire(conn, "me", now=T0, duration=timedelta(seconds=30), limit=1)
    lease = Lease(lease.account_id, lease.owner, lease.generation, T0, failures=2)
    assert finish(sqlite_store, lease, result, Schedule(interval=120), now=T0, conflict=conflict)
    with sqlite_store.engine.connect() as conn:
        state = leases.states(conn)[lease.account_id]
    assert state.next_run_at == T0 + timedelta(seconds=after)
    assert state.failures == failures
    assert state.owner is None


def test_the_acquired_lease_knows_when_it_was_due_and_the_release_keeps_that_rhythm(
    sqlite_store: object,
) -> None:
    from maillink.store import Store

    assert isinstance(sqlite_store, Store)
    schedule, hold = Schedule(interval=120), timedelta(seconds=30)
    with sqlite_store.transaction() as conn:
        accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        leases.ensure(conn, T0)
        (first,) = leases.acquire(conn, "me", now=T0, duration=hold, limit=1)
    # A new mailbox has been due since ever: its first rhythm starts at its round's end.
    assert finish(sqlite_store, first, RoundResult("a"), schedule, now=T0)
    due = T0 + timedelta(seconds=120)
    picked_up = due + timedelta(seconds=2)  # the daemon looked 2 s after it was due
    with sqlite_store.transaction() as conn:
        (lease,) = leases.acquire(conn, "me", now=picked_up, duration=hold, limit=1)
    assert lease.due_at == due
    ended = picked_up + timedelta(seconds=9)
    assert finish(sqlite_store, lease, RoundResult("a"), schedule, now=ended)
    with sqlite_store.engine.connect() as conn:
        assert leases.states(conn)[lease.account_id].next_run_at == due + timedelta(seconds=120)


def test_a_unique_key_race_is_a_conflict_and_a_bug_is_not() -> None:
    from sqlalchemy.exc import IntegrityError

    assert is_conflict(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_conflict(KeyError("x"))


# -- through a running daemon -----------------------------------------------------------------


@pytest.fixture
def team(tmp_path: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox) -> Iterator[App]:
    config = write_workspace(tmp_path, google, pipedrive, internal_domains=[DOMAIN])
    write_daemon_config(config, interval=1, lease=5, workers=1, max_backoff=30, ops=False)
    app = App(load_settings(config, env={}))
    yield app
    app.close()


def test_one_failing_mailbox_never_delays_the_others_and_skipped_ones_are_left_alone(
    team: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    mail = Team(google, pipedrive)
    for i in range(5):
        mail.add_mailbox(rep(i))
        connect(team, google, rep(i))
        customer = mail.customer(f"c{i}", deal=True)
        mail.send(rep(i), customer, NOW - timedelta(days=1))
    with team.store.transaction() as conn:
        broken = accounts.get(conn, rep(0))
        assert broken is not None
        accounts.set_token(conn, broken.id, "not a token any key decrypts")
        accounts.set_status(conn, accounts.get(conn, rep(3)).id, accounts.PAUSED)  # type: ignore[union-attr]
        accounts.set_status(conn, accounts.get(conn, rep(4)).id, accounts.NEEDS_REAUTH)  # type: ignore[union-attr]

    stop = threading.Event()
    daemon = Daemon(team, should_stop=stop.is_set, tick=0.05)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:

        def synced() -> bool:
            with team.store.engine.connect() as conn:
                return all(
                    (a := accounts.get(conn, rep(i))) is not None and a.last_sync_at is not None
                    for i in (1, 2)
                )

        wait_for(synced, 20, "the healthy mailboxes synced")
        # The healthy ones keep going round by round while the broken one backs off.

        def rounds(email: str) -> int:
            with team.store.engine.connect() as conn:
                account = accounts.get(conn, email)
                assert account is not None
                return leases.states(conn)[account.id].generation

        wait_for(lambda: rounds(rep(1)) >= 6, 30, "more rounds of the healthy mailboxes")
    finally:
        stop.set()
        runner.join(timeout=20)
    assert not runner.is_alive()
    with team.store.engine.connect() as conn:
        state = leases.states(conn)
        failing = accounts.get(conn, rep(0))
        assert failing is not None and failing.last_error and "decrypt" in failing.last_error
        assert failing.last_sync_at is None
        healthy = accounts.get(conn, rep(1))
        assert healthy is not None
        # Every round of the broken one failed, and it backed off: it had fewer rounds.
        assert 1 <= state[failing.id].failures == state[failing.id].generation
        assert state[healthy.id].generation >= state[failing.id].generation + 2
        assert state[healthy.id].failures == 0
        assert all(s.owner is None for s in state.values())  # every lease given back on stop
    assert google.max_concurrency(rep(3)) == 0  # paused: never called
    assert google.max_concurrency(rep(4)) == 0  # needs re-authorisation: never called
    assert len(pipedrive.activities()) == 2
