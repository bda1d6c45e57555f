"""`maillink daemon` as an admin runs it on one machine (SQLite): SIGTERM finishes the page in
hand and exits 0, logs are JSON with account ids and no tokens, `sync --once` leaves a mailbox a
running daemon holds alone."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import requests
from tests.daemon.support import Team, start_daemon, wait_for, write_daemon_config
from tests.e2e.conftest import Ran
from tests.e2e.support import NOW, REP, connect

from maillink.app import App
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.store import accounts as store_accounts
from maillink.store import leases


def _stored(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def test_sigterm_finishes_the_page_in_hand_exits_0_and_the_next_daemon_resumes(
    tmp_path: Path, config: Path, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    write_daemon_config(config, interval=1, lease=5, workers=1)
    config.write_text(config.read_text().replace("[sync]\n", "[sync]\npage_size = 40\n"))
    team = Team(google, pipedrive)
    team.add_mailbox(REP)
    connect(app, google, REP)
    customer = team.customer("ann", deal=True)
    for i in range(200):
        team.send(REP, customer, NOW - timedelta(hours=200 - i), subject=f"n{i}")
    google.faults.add(Fault(path="^/batch/gmail/v1", action="delay", seconds=0.3, times=100))
    database = config.parent / "maillink.db"

    first = start_daemon(config, tmp_path, "first", "--log-format", "json")
    try:
        wait_for(lambda: database.exists() and _stored(database) > 0, 30, "a first page stored")
        assert first.stop() == 0, first.stderr()[-2000:]
    finally:
        first.kill()
    halfway = _stored(database)
    assert 0 < halfway < 200  # stopped after the page in hand, not at once, not at the end
    logs = [json.loads(line) for line in first.stderr().splitlines() if line.strip()]
    assert all(entry["level"] in ("info", "warning", "error") for entry in logs)
    assert any("stopping after the page in hand" in entry["message"] for entry in logs)
    assert any(entry.get("event") == "round" and entry.get("account_id") for entry in logs)
    refresh_token = json.loads(app.cipher.decrypt(app.account(REP).token or ""))["refresh_token"]
    assert refresh_token not in first.stderr() + first.stdout()
    with app.store.engine.connect() as conn:
        (state,) = leases.states(conn).values()
    assert state.owner is None  # given back, due at once for whoever comes next

    google.faults.clear()
    second = start_daemon(config, tmp_path, "second")
    try:
        wait_for(lambda: len(pipedrive.activities()) == 200, 40, "the rest of the mailbox")
        health = requests.get(second.ops_url() + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert second.stop() == 0
    finally:
        second.kill()
    assert _stored(database) == 200
    assert f"{REP}: " in second.stdout() and "new messages" in second.stdout()
    assert all(len(pipedrive.activities_with_key(f"d{n}@mail.example")) == 1 for n in (1, 100, 200))


def test_sync_once_skips_a_mailbox_a_running_daemon_holds(
    cli: object, config: Path, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    from datetime import UTC, datetime

    google.add_mailbox(REP)
    connect(app, google, REP)
    with app.store.transaction() as conn:
        leases.ensure(conn, datetime.now(UTC))
        (held,) = leases.acquire(
            conn,
            "other-host-1-abc",
            now=datetime.now(UTC),
            duration=timedelta(minutes=5),
            limit=1,
        )
    assert callable(cli)
    ran: Ran = cli("sync", "--once")
    assert ran.code == 0, ran.err
    assert f"{REP}: skipped, another daemon is syncing it" in ran.out
    with app.store.engine.connect() as conn:
        assert leases.states(conn)[held.account_id].owner == "other-host-1-abc"
        account = store_accounts.get(conn, REP)
        assert account is not None and account.last_sync_at is None


def test_backfill_holds_the_mailbox_against_the_daemons_and_waits_for_their_round(
    cli: object, config: Path, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    from datetime import UTC, datetime

    write_daemon_config(config, interval=600, lease=2)
    team = Team(google, pipedrive)
    team.add_mailbox(REP)
    connect(app, google, REP)
    team.send(REP, team.customer("ann", deal=True), NOW - timedelta(days=1))
    with app.store.transaction() as conn:
        leases.ensure(conn, datetime.now(UTC))
        (held,) = leases.acquire(
            conn, "busy-host-1-abc", now=datetime.now(UTC), duration=timedelta(hours=1), limit=1
        )
    assert callable(cli)
    busy: Ran = cli("backfill")  # a daemon is in the middle of a (very long) round
    assert busy.code == 1
    assert f"{REP}: skipped, another daemon is syncing it" in busy.out
    assert pipedrive.activities() == []

    with app.store.transaction() as conn:
        assert leases.release(conn, held, next_run_at=datetime.now(UTC), failures=0)
    done: Ran = cli("backfill")
    assert done.code == 0, done.err
    assert len(pipedrive.activities()) == 1
    with app.store.engine.connect() as conn:
        (state,) = leases.states(conn).values()
    assert state.owner is None and state.generation == held.generation + 1
    # The daemons' next round comes on schedule (the 600 s interval), not at once.
    assert state.next_run_at > datetime.now(UTC) + timedelta(seconds=300)


def test_push_topic_without_push_credentials_is_refused_before_any_work(
    cli: object, config: Path
) -> None:
    """Google would push to an endpoint that cannot tell its pushes from forged ones."""
    write_daemon_config(config)
    config.write_text(
        config.read_text().replace(
            "[gmail]\n", '[gmail]\npush_topic = "projects/p/topics/gmail"\n', 1
        )
    )
    assert callable(cli)
    ran: Ran = cli("daemon")
    assert ran.code == 2
    assert "push_topic" in ran.err and "gmail_push" in ran.err
    assert "Traceback" not in ran.err
