"""The web app's first sync of a mailbox is a round like the daemon's: it holds the mailbox's lease.

While another process (a daemon) holds the mailbox, the web job writes nothing and the page says
the daemon is syncing it; once the mailbox is given back, the job takes it and syncs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from tests.daemon.support import wait_for
from tests.e2e.support import connect
from tests.web.support import ANN, Team, sign_in, text

from maillink.app import App
from maillink.store import leases
from maillink.web.jobs import SyncJobs

DAEMON = "daemon-host-4242-abcdef"  # a holder on another host: never judged gone by its pid


def _messages(client: FlaskClient, account_id: int) -> int:
    progress = client.get(f"/mailboxes/{account_id}/progress").get_json()
    return int(progress["messages"])


def test_the_first_sync_waits_for_the_daemon_holding_the_mailbox_then_syncs(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN, admin=True)
    connect(app, team.google, ANN)
    account = app.account(ANN)
    now = datetime.now(UTC)
    with app.store.transaction() as conn:
        leases.ensure(conn, now)
        (held,) = leases.acquire(
            conn,
            DAEMON,
            now=now,
            duration=timedelta(minutes=10),
            limit=1,
            due_only=False,
            account_ids=[account.id],
        )
    jobs: SyncJobs = web.extensions["maillink"].jobs
    jobs.poll = 0.05
    jobs.start(account)

    job = wait_for(
        lambda: (j := jobs.get(account.id)) is not None and j.held_by == DAEMON and j,
        30,
        "the web job sees the daemon's lease",
    )
    assert job.running and job.first and job.messages == 0
    page = text(client.get(f"/mailboxes/{account.id}"))
    assert "Being synced by the daemon" in page
    assert _messages(client, account.id) == 0  # nothing written beside the daemon's round
    assert not client.get(f"/mailboxes/{account.id}/progress").get_json()["done"]

    with app.store.transaction() as conn:
        assert leases.release(conn, held, next_run_at=datetime.now(UTC), failures=0)
    done = jobs.wait(account.id)
    assert done is not None and not done.running and done.error is None, done
    assert done.held_by is None and done.first
    assert _messages(client, account.id) == 3
    assert "Up to date" in text(client.get(f"/mailboxes/{account.id}"))
    with app.store.engine.connect() as conn:
        state = leases.state(conn, account.id)
    assert state is not None and state.owner is None  # the web job gave the mailbox back
    assert state.generation == held.generation + 1  # … after holding it itself
