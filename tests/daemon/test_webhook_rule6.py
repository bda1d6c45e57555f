"""Rule 6 through the Pipedrive webhook: a deal won between two messages of a thread keeps the
first message and not the second, although the cached facts would still call it open."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from tests.daemon.support import Team, wait_for, write_daemon_config
from tests.e2e.support import DOMAIN, NOW, REP, connect

from maillink.app import App
from maillink.config import load_settings
from maillink.daemon import run_daemon
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace

USER, PASSWORD = "pipedrive-hook", "correct-horse-battery-staple"


@pytest.fixture
def running(
    tmp_path: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> Iterator[tuple[App, str]]:
    """A daemon in this process: fast rounds, caches that would stay fresh for an hour, no CRM
    polling to speak of — only the webhook can tell it about the won deal."""
    config = write_workspace(tmp_path, google, pipedrive, internal_domains=[DOMAIN])
    write_daemon_config(config, interval=1, lease=5, workers=1, crm_poll=3600)
    config.write_text(
        config.read_text() + "\n[cache]\nperson_ttl_seconds = 3600\nitems_ttl_seconds = 3600\n"
    )
    credentials = config.parent / "credentials.json"
    data = json.loads(credentials.read_text())
    data["webhook"] = {"username": USER, "password": PASSWORD}
    credentials.write_text(json.dumps(data))
    app = App(load_settings(config, env={}))
    google.add_mailbox(REP)
    connect(app, google, REP)
    stop = threading.Event()
    lines: list[str] = []
    runner = threading.Thread(
        target=run_daemon,
        kwargs={"app": app, "should_stop": stop.is_set, "out": lines.append, "ops_port": 0},
    )
    runner.start()
    try:
        printed = wait_for(
            lambda: next((m for line in lines if (m := re.search(r"on (http://\S+)", line))), None),
            20,
            "the ops URL",
        )
        yield app, printed.group(1)
    finally:
        stop.set()
        runner.join(timeout=20)
        app.close()
    assert not runner.is_alive()


def _activity(pipedrive: PipedriveSandbox, subject: str) -> dict[str, object] | None:
    return next((a for a in pipedrive.activities() if a["subject"] == subject), None)


def test_a_deal_won_through_the_webhook_between_two_messages_shows_rule_6(
    running: tuple[App, str], google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    app, url = running
    team = Team(google, pipedrive)
    team.keys[REP], team.threads[REP] = set(), []
    ann = pipedrive.add_person("Ann", ["ann@customer.example"])
    deal = pipedrive.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    first = team.send(REP, "ann@customer.example", NOW - timedelta(days=2), subject="before")
    before = wait_for(lambda: _activity(pipedrive, "before"), 20, "the first message's activity")
    assert before["deal_id"] == deal  # one open deal: linked (rule 4)

    pipedrive.set_deal_status(deal, "won", at=NOW - timedelta(hours=1))
    event = {
        "meta": {
            "action": "change",
            "entity": "deal",
            "entity_id": str(deal),
            "version": "2.0",
            "change_source": "app",
        },
        "data": {"id": deal, "person_id": ann, "status": "won", "title": "Licences"},
        "previous": {"status": "open"},
    }
    refused = requests.post(f"{url}/webhooks/pipedrive", json=event, timeout=10)
    assert refused.status_code == 401
    accepted = requests.post(
        f"{url}/webhooks/pipedrive", json=event, auth=(USER, PASSWORD), timeout=10
    )
    assert accepted.status_code == 200, accepted.text

    team.send(REP, "ann@customer.example", NOW, thread=first, subject="after")
    after = wait_for(lambda: _activity(pipedrive, "after"), 20, "the second message's activity")
    assert after.get("deal_id") is None  # won before it was exchanged: rule 6
    assert _activity(pipedrive, "before")["deal_id"] == deal  # exchanged while open: kept

    with app.store.engine.connect() as conn:
        reasons = dict(
            conn.exec_driver_sql(
                "SELECT json_extract(headers, '$.subject'), reason FROM messages"
            ).all()
        )
    assert reasons == {"before": "single_open_item", "after": "item_closed_before_message"}

    def counted() -> str | None:
        # A round's decisions are committed before its counters move: wait for them.
        text = requests.get(f"{url}/metrics", timeout=10).text
        return text if 'maillink_links_total{reason="item_closed_before_message"}' in text else None

    metrics = wait_for(counted, 20, "the round's decisions counted in /metrics")
    assert 'maillink_crm_changes_total{source="webhook"} 1.0' in metrics
