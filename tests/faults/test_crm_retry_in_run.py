"""`maillink sync --once` retries transient CRM failures within the run: a 5xx or a lost answer to
a create is looked up by maillink-id, then created, and one run delivers everything; when the CRM
stays down, the retries are bounded and the summary counts what is left for later."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

from tests.daemon.support import Team
from tests.e2e.conftest import Ran, app, cli, config, crm, google, pipedrive
from tests.e2e.support import NOW, REP, connect
from tests.faults.support import check_invariants

from maillink.app import App
from maillink.daemon import sync_round
from maillink.outbox import pending_count
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.pipedrive.data import note_lines
from maillink.sync import CrmRetry
from maillink.sync_report import mailbox_line, round_json, totals_line

__all__ = ["app", "cli", "config", "crm", "google", "pipedrive"]  # the end-to-end fixtures

EMAILS = 6


def _mailbox(app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox) -> None:
    team = Team(google, pipedrive)
    team.add_mailbox(REP)
    connect(app, google, REP)
    ann = team.customer("ann", deal=True)
    for n in range(EMAILS):
        team.send(REP, ann, NOW - timedelta(days=EMAILS - n), subject=f"Quote {n}")


def _keys(pipedrive: PipedriveSandbox) -> Counter[str]:
    return Counter(note_lines(a["note"])[-1] for a in pipedrive.activities())


def test_a_5xx_and_a_lost_answer_on_creates_are_retried_within_one_sync_once(
    cli: object, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    _mailbox(app, google, pipedrive)
    # The first create is done but its answer is lost; the next two are answered 503.
    pipedrive.lose_next_response(r"/api/v2/activities$", method="POST", times=1)
    pipedrive.faults.add(
        Fault(path=r"/api/v2/activities$", method="POST", status=503, after=1, times=2)
    )
    assert callable(cli)
    ran: Ran = cli("sync", "--once", "--json")
    assert ran.code == 0, ran.out + ran.err

    report = json.loads(ran.out)
    (mailbox,) = report["mailboxes"]
    assert mailbox["crm_retries"] >= 1
    assert mailbox["activities"]["failed_attempts"] == 3  # two 503s and the lost answer
    assert mailbox["activities"]["found_again"] == 1  # the lost answer, found by maillink-id
    assert mailbox["activities"]["created"] == EMAILS - 1
    assert mailbox["left_for_later"] == {"crm_writes": 0, "undecided_messages": 0}
    assert report["summary"]["left_for_later"] == {"crm_writes": 0, "undecided_messages": 0}
    assert pipedrive.meter.statuses[503] == 2
    keys = _keys(pipedrive)
    assert len(keys) == EMAILS and set(keys.values()) == {1}  # all delivered, none twice
    with app.store.engine.connect() as conn:
        assert pending_count(conn) == 0
    check_invariants(app.store, google, pipedrive)


def test_when_the_crm_stays_down_the_retries_are_bounded_and_what_is_left_is_counted(
    app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    _mailbox(app, google, pipedrive)
    down = pipedrive.faults.add(
        Fault(path=r"/api/v2/activities$", method="POST", status=503, times=10**6)
    )
    pauses: list[float] = []
    (result,) = sync_round(app, retry=CrmRetry(sleep=pauses.append))
    assert result.error is None and result.messages == EMAILS
    assert pauses == [0.5, 1.0, 2.0]  # a few attempts, short backoff, then the run ends
    assert result.crm_retries == 3
    assert (result.crm_writes_left, result.undecided_left) == (EMAILS, 0)
    assert result.delivery.created == 0
    assert f"left for later: {EMAILS} CRM writes" in mailbox_line(result)
    assert f"left for later: {EMAILS} CRM writes, 0 undecided messages" in totals_line([result])
    summary = round_json([result])["summary"]
    assert summary["left_for_later"] == {"crm_writes": EMAILS, "undecided_messages": 0}
    assert pipedrive.activities() == []

    down.times = 0  # the CRM is back: the next run delivers what was left, once each
    (again,) = sync_round(app, retry=CrmRetry(sleep=pauses.append))
    assert (again.delivery.created, again.crm_writes_left) == (EMAILS, 0)
    assert again.crm_retries == 1 and len(pauses) == 3  # their backoff is not waited for
    keys = _keys(pipedrive)
    assert len(keys) == EMAILS and set(keys.values()) == {1}
    check_invariants(app.store, google, pipedrive)
