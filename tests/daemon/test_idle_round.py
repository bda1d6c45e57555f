"""What an idle round costs (issue 11): one provider request, the acquisition of its lease, one
read, and one short transaction that releases the mailbox with its next run — whatever the number
of mailboxes.

The rounds run in the daemon as its main loop takes the leases (`Daemon._acquire`) and its workers
run them (`Daemon._work`), against the Gmail sandbox on SQLite and PostgreSQL, on the daemon's own
clock (injected); SQL is counted with SQLAlchemy's engine events.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from tests.daemon.support import Team, rep, write_daemon_config
from tests.e2e.support import DOMAIN, NOW, connect

from maillink.app import App
from maillink.config import load_settings
from maillink.daemon.loop import Daemon
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts, leases

MAILBOXES = 30


@dataclass
class SQL:
    """The statements and transactions an engine ran while `counted` was open."""

    statements: list[str] = field(default_factory=list)
    transactions: Counter[str] = field(default_factory=Counter)

    @property
    def writes(self) -> list[str]:
        return [s for s in self.statements if not s.lstrip().upper().startswith("SELECT")]

    def reading_every_mailbox(self) -> list[str]:
        """The statements that read the whole accounts table (no WHERE)."""
        return self._reading_every("accounts")

    def reading_every_lease(self) -> list[str]:
        """The statements that read the whole leases table (no WHERE), or every account
        without a lease row (`leases.ensure`'s anti-join)."""
        return self._reading_every("leases") + [s for s in self.statements if "NOT (EXISTS" in s]

    def _reading_every(self, table: str) -> list[str]:
        return [
            s
            for s in self.statements
            if f" FROM {table}" in s and "WHERE" not in s and s.lstrip().startswith("SELECT")
        ]


@contextmanager
def counted(engine: Engine) -> Iterator[SQL]:
    sql = SQL()

    def statement(_conn: Any, _cursor: Any, text: str, *_args: Any) -> None:
        sql.statements.append(" ".join(text.split()))

    listeners: list[tuple[str, Any]] = [("before_cursor_execute", statement)]
    for name in ("begin", "commit", "rollback"):
        listeners.append((name, lambda _conn, name=name: sql.transactions.update([name])))
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        yield sql
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)


@pytest.fixture(params=["sqlite", "postgresql"])
def team_app(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
) -> Iterator[App]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    config = write_workspace(tmp_path, google, pipedrive, internal_domains=[DOMAIN], store_url=url)
    write_daemon_config(config, interval=60, lease=60, workers=1, ops=False)
    app = App(load_settings(config, env={}))
    yield app
    app.close()


class Clock:
    """The daemon's clock, moved on by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _daemon(app: App, clock: Clock | None = None) -> Daemon:
    daemon = Daemon(
        app, should_stop=threading.Event().is_set, workers=1, **({"clock": clock} if clock else {})
    )
    with app.store.transaction() as conn:
        leases.ensure(conn, daemon.clock())
    return daemon


def _take(daemon: Daemon, email: str) -> leases.Lease:
    """`email`'s lease, as the daemon's main loop takes it for a worker."""
    account = daemon.app.account(email)
    (lease,) = daemon.rounds.acquire(limit=1, account_ids=[account.id], due_only=False)
    return lease


def _round(daemon: Daemon, email: str) -> None:
    """One round of `email`'s mailbox, as a daemon worker runs it (the lease taken first)."""
    daemon._round(_take(daemon, email))


def _next_due_round(daemon: Daemon) -> bool:
    """The main loop's acquisition for its one free worker, then the worker's round; False when
    no mailbox was due."""
    daemon._acquire()
    if daemon._queue.empty():
        return False
    daemon._queue.put(None)  # the worker runs the round it was given, then returns
    daemon._work()
    return True


def _team(app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox) -> Team:
    team = Team(google, pipedrive)
    for i in range(MAILBOXES):
        team.add_mailbox(rep(i))
        connect(app, google, rep(i))
    customer = team.customer("carol", deal=True)
    team.send(rep(0), customer, NOW - timedelta(days=2))
    return team


def test_an_idle_round_with_its_acquisition_costs_one_request_and_five_statements(
    team_app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    _team(team_app, google, pipedrive)
    clock = Clock()
    daemon = _daemon(team_app, clock)
    while _next_due_round(daemon):  # every mailbox's first round (rep0's: an email to link)
        pass
    clock.now += timedelta(seconds=61)  # an interval later: every mailbox is due again
    assert _next_due_round(daemon)  # the most overdue one (and a look at holders gone)
    idle = team_app.account(rep(1))
    before = idle.last_sync_at
    assert before is not None

    google.meter.reset()
    with counted(team_app.store.engine) as sql:
        assert _next_due_round(daemon)  # the next one, a moment later: rep1, nothing new

    # One request: history.list answering that nothing is new (no token refresh, no listing).
    assert google.meter.requests == Counter({"http": 1, "gmail.history.list": 1})
    # Its lease taken (the due leases, one compare-and-set for those taken), the mailbox with
    # its pending work and cursor (one read), the release: at most 5 statements.
    assert len(sql.statements) <= 5, sql.statements
    assert sql.reading_every_mailbox() == [] and sql.reading_every_lease() == []
    # Written: the lease as it is taken, then its release with the next run and the round's
    # outcome on the mailbox (`maillink accounts` shows when it last synced) in one
    # transaction; no cursor rewritten.
    assert [w.split()[1] for w in sql.writes] == ["leases", "leases", "accounts"], sql.writes
    assert sql.transactions["commit"] == 2
    assert sql.transactions["begin"] <= 3
    after = team_app.account(rep(1))
    assert after.last_sync_at is not None and after.last_sync_at > before
    assert after.last_error is None
    with team_app.store.engine.connect() as conn:
        state = leases.state(conn, idle.id)
    assert state is not None and state.owner is None
    # An interval after it was due (a second before it was picked up), not after the round.
    assert state.next_run_at == clock.now + timedelta(seconds=59)
    assert state.generation == 2  # taken twice: its first round, this one


def test_the_linking_policy_is_built_once_and_again_only_when_the_mailboxes_change(
    team_app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    team = _team(team_app, google, pipedrive)
    daemon = _daemon(team_app)
    _round(daemon, rep(0))

    # Rounds that link new mail, in several mailboxes: no read of every mailbox, no rebuild.
    customer = team.customer("dave", deal=True)
    with counted(team_app.store.engine) as sql:
        for i in (0, 1, 2):
            team.send(rep(i), customer, NOW - timedelta(hours=i + 1))
            _round(daemon, rep(i))
    assert sql.reading_every_mailbox() == []
    builds = team_app.policy_builds
    assert builds == 1  # at the first round, from every mailbox

    # A mailbox connected meanwhile (by another process: `maillink connect`) is one of the
    # team's own addresses at the next round that links something.
    colleague = "pat@partner.example"
    team.add_mailbox(colleague)
    other = App(team_app.settings)
    try:
        connect(other, google, colleague)
    finally:
        other.close()
    thread = team.send(rep(0), colleague, NOW - timedelta(minutes=30), subject="Lunch")
    _round(daemon, rep(0))
    assert team_app.policy_builds == builds + 1
    assert colleague in team_app.policy().own_addresses
    with team_app.store.engine.connect() as conn:
        decided = conn.exec_driver_sql(
            "SELECT reason FROM messages WHERE provider_id = ?"
            if conn.dialect.name == "sqlite"
            else "SELECT reason FROM messages WHERE provider_id = %s",
            (thread,),
        ).scalar_one()
    assert decided == "internal_only"

    # Removing a mailbox changes them too.
    with team_app.store.transaction() as conn:
        gone = accounts.get(conn, colleague)
        assert gone is not None
        accounts.remove(conn, gone.id)
    assert colleague not in team_app.policy().own_addresses
    assert team_app.policy_builds == builds + 2


def test_a_connection_the_database_dropped_costs_no_round_without_a_ping_per_checkout(
    tmp_path: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox, pg_url: str
) -> None:
    """No `SELECT 1` before each transaction: after PostgreSQL closed every connection (a
    restart), the next round still runs and succeeds on a fresh connection."""
    import psycopg

    config = write_workspace(
        tmp_path, google, pipedrive, internal_domains=[DOMAIN], store_url=pg_url
    )
    write_daemon_config(config, interval=60, lease=60, workers=1, ops=False)
    app = App(load_settings(config, env={}))
    try:
        team = Team(google, pipedrive)
        team.add_mailbox(rep(0))
        connect(app, google, rep(0))
        daemon = _daemon(app)
        _round(daemon, rep(0))
        assert not app.store.engine.pool._pre_ping  # type: ignore[attr-defined]

        lease = _take(daemon, rep(0))
        database = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        daemon._round(lease)  # its first statement meets the dropped connection
        account = app.account(rep(0))
        assert account.last_error is None
        with app.store.engine.connect() as conn:
            state = leases.state(conn, account.id)
        assert state is not None and state.owner is None and state.generation == lease.generation
    finally:
        app.close()
