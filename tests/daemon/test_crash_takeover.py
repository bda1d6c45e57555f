"""A crash must not silence the next run: the lease of a killed `sync --once` or `backfill` is
free at once for the next run on the same host, and a mailbox a live process holds is said, on
stderr, in the summary and in `sync --once --json`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.daemon.support import Team, wait_for, write_daemon_config
from tests.e2e.conftest import Ran
from tests.e2e.support import NOW, REP, connect

from maillink import holders
from maillink.app import App
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.store import leases
from maillink.store.schema import messages

BOB = "bob@acme.example"
LEASE_SECONDS = 600  # a killed run's lease would silence every run for ten minutes


def _stored(app: App) -> int:
    with app.store.engine.connect() as conn:
        return len(conn.execute(messages.select()).all())


def _owner(app: App) -> str | None:
    with app.store.engine.connect() as conn:
        (state,) = leases.states(conn).values()
    return state.owner


@pytest.mark.skipif(holders.start_time(os.getpid()) is None, reason="needs /proc")
@pytest.mark.parametrize("command", [("sync", "--once"), ("backfill",)])
def test_the_run_after_a_sigkilled_one_syncs_the_mailbox_at_once(
    command: tuple[str, ...],
    cli: object,
    config: Path,
    app: App,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
    tmp_path: Path,
) -> None:
    write_daemon_config(config, lease=LEASE_SECONDS)
    team = Team(google, pipedrive)
    team.add_mailbox(REP)
    connect(app, google, REP)
    ann = team.customer("ann", deal=True)
    for day in range(3):
        team.send(REP, ann, NOW - timedelta(days=3 - day))
    # The listing of the mailbox stalls: the run holds the lease, mid-round, when it is killed.
    stall = google.faults.add(
        Fault(path=r"/messages$", method="GET", action="delay", seconds=30, times=1)
    )
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    with (tmp_path / "killed.err").open("w") as err:
        killed = subprocess.Popen(
            [sys.executable, "-m", "maillink", *command],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        wait_for(lambda: stall.times == 0 and _owner(app), 60, "the run holds the mailbox")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    dead = _owner(app)
    assert dead is not None and holders.parse(dead).pid == killed.pid
    assert _stored(app) == 0 and pipedrive.activities() == []

    assert callable(cli)
    after: Ran = cli("sync", "--once")
    assert after.code == 0, after.out + after.err
    assert "skipped" not in after.out + after.err
    assert f"{REP}: taken over from pid {killed.pid} on " in after.err
    assert _stored(app) == 3
    assert len(pipedrive.activities()) == 3
    with app.store.engine.connect() as conn:
        (state,) = leases.states(conn).values()
    assert state.owner is None and state.generation == 2  # taken over with the next generation


def test_a_mailbox_a_live_process_holds_is_said_on_stderr_in_the_summary_and_in_json(
    cli: object, config: Path, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    write_daemon_config(config, lease=LEASE_SECONDS)
    team = Team(google, pipedrive)
    for box in (REP, BOB):
        team.add_mailbox(box)
        connect(app, google, box)
    team.send(BOB, team.customer("ann", deal=True), NOW - timedelta(days=1))
    holder = holders.holder_id()  # this test's own process: alive
    with app.store.transaction() as conn:
        leases.ensure(conn, datetime.now(UTC))
        (held,) = leases.acquire(
            conn,
            holder,
            now=datetime.now(UTC),
            duration=timedelta(minutes=5),
            limit=1,
            account_ids=[app.account(REP).id],
        )
    until = held.acquired_at + timedelta(minutes=5)
    assert callable(cli)

    ran: Ran = cli("sync", "--once")
    assert ran.code == 0, ran.out + ran.err
    (line,) = [x for x in ran.err.splitlines() if "skipped" in x]
    assert REP in line and holder in line and until.isoformat(timespec="seconds") in line
    if holders.parse(holder).pid is not None:
        assert f"pid {os.getpid()} on {holders.parse(holder).host}" in line
    assert f"{REP}: skipped, another daemon is syncing it; held by" in ran.out
    assert "1 mailboxes synced, 1 skipped (held by another process: " + REP + ")" in ran.out
    assert len(pipedrive.activities()) == 1  # the other mailbox was synced

    as_json: Ran = cli("sync", "--once", "--json")
    assert as_json.code == 0, as_json.err
    assert any(REP in x and holder in x for x in as_json.err.splitlines())
    report = json.loads(as_json.out)
    by_account = {m["account"]: m for m in report["mailboxes"]}
    skipped = by_account[REP]
    assert skipped["status"] == "skipped"
    assert skipped["skipped"]["holder"] == holder
    assert skipped["skipped"]["until"] == until.isoformat(timespec="seconds")
    assert by_account[BOB]["status"] == "ok" and by_account[BOB]["skipped"] is None
    assert report["summary"]["skipped"] == 1 and report["summary"]["synced"] == 1
    with app.store.engine.connect() as conn:
        assert leases.states(conn)[held.account_id].owner == holder  # left alone
