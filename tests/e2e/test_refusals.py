"""Deleted items and CRM refusals (issue 9 §1), as a user meets them: the CLI in a subprocess,
the Pipedrive sandbox changing under it over real HTTP.

- a deal deleted before the first sync is never a candidate: the emails reach the CRM linked to
  their persons only;
- a deal deleted, or a person merged away, between the decision and the delivery: the CRM's 400
  makes maillink refresh its facts and decide the thread again; the new decision is delivered;
- any other permanent refusal is not retried for ever: it is counted (`accounts`, `/metrics`),
  explained (`explain`), listed (`outbox list`) and delivered by `outbox retry` once fixed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
from tests.e2e.conftest import Ran
from tests.e2e.support import NOW, REP, CrmSandbox, both_crms, connect

from maillink.app import App
from maillink.config import WebhookCredentials, load_settings
from maillink.ops.metrics import Metrics
from maillink.ops.server import OpsContext, create_ops_app
from maillink.outbox import Outbox
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sync import Syncer

ANN = "ann@customer.example"
Cli = Callable[..., Ran]
ACTIVITIES = r"^/api/v2/activities$"


def _thread(google: GoogleSandbox, sender: str = ANN, count: int = 3, tag: str = "r") -> list[str]:
    """A thread of `count` emails between `sender` and the rep, the last 3 days; their keys."""
    google.add_mailbox(REP)
    first = None
    keys = []
    for i in range(count):
        date = NOW - timedelta(days=3 - i)
        frm, to = (sender, REP) if i % 2 == 0 else (REP, sender)
        key = f"{tag}-{i}@mail.example"
        headers = [
            ("From", frm),
            ("To", to),
            ("Subject", "Quote"),
            ("Date", format_datetime(date)),
            ("Message-ID", f"<{key}>"),
        ]
        labels = ("SENT",) if frm == REP else ("INBOX",)
        added = google.add_message(
            REP, headers=headers, internal_date=date, thread_id=first, label_ids=labels
        )
        first = first or added
        keys.append(key)
    return keys


def _activity(pipedrive: PipedriveSandbox, key: str) -> dict[str, object]:
    found = [a for a in pipedrive.activities_with_key(key) if not a["is_deleted"]]
    assert len(found) == 1, (key, found)
    return found[0]


def _failed(cli: Cli) -> list[dict[str, object]]:
    listed = cli("outbox", "list", "--json")
    assert listed.code == 0, listed.err
    rows: list[dict[str, object]] = json.loads(listed.out)
    return rows


@both_crms
def test_deal_deleted_before_the_first_sync_is_never_a_candidate(
    cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    # Deleted after every email of the thread was exchanged: it was open when they were.
    crm.set_deal_status(deal, "deleted", at=NOW - timedelta(hours=1))
    keys = _thread(google)
    connect(app, google)

    ran = cli("sync", "--once")
    assert ran.code == 0, ran.err

    for key in keys:
        email = crm.email(key)
        assert email.items == set() and email.persons == {ann}
    assert _failed(cli) == []
    explained = json.loads(cli("explain", f"<{keys[0]}>", "--json").out)
    assert explained["linked"] is None
    assert all(m["delivery"]["state"] == "delivered" for m in explained["messages"])
    reasons = {m["reason"] for m in explained["messages"]}
    if crm.kind == "pipedrive":  # Pipedrive still lists the deleted deal: explain names it
        assert reasons == {"item_closed_before_message"}
        assert f"deal:{deal} 'Licences' was deleted" in explained["messages"][0]["detail"]
    else:  # HubSpot's delete archives: the deal is not read at all
        assert reasons == {"no_open_items"}


@pytest.mark.pipedrive_only
def test_deal_deleted_between_decision_and_delivery_is_decided_again(
    cli: Cli, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    ann = pipedrive.add_person("Ann", [ANN])
    deal = pipedrive.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    keys = _thread(google)
    connect(app, google)
    # The rep's colleague deletes the deal after maillink decided, just before its first write.
    pipedrive.before_next(
        ACTIVITIES, lambda: pipedrive.set_deal_status(deal, "deleted", at=NOW), method="POST"
    )

    for _ in range(2):  # the refusal is decided again in this run or, at the latest, the next
        ran = cli("sync", "--once")
        assert ran.code == 0, ran.err

    assert pipedrive.meter.statuses[400] >= 1, "the CRM refused the write naming the deal"
    for key in keys:
        activity = _activity(pipedrive, key)
        assert activity["deal_id"] is None and activity["person_id"] == ann
    assert _failed(cli) == []
    explained = json.loads(cli("explain", f"<{keys[0]}>", "--json").out)
    history = [h["reason"] for h in explained["messages"][0]["history"]]
    assert history[0] == "single_open_item" and history[-1] == "item_closed_before_message"
    assert explained["messages"][0]["delivery"]["state"] == "delivered"


@pytest.mark.pipedrive_only
def test_person_merged_into_another_between_decision_and_delivery(
    cli: Cli, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    ann = pipedrive.add_person("Ann", [ANN])
    kept = pipedrive.add_person("Ann Lee", ["ann.lee@customer.example"])
    keys = _thread(google, count=1)
    connect(app, google)

    def merge() -> None:  # as a Pipedrive user (or integration) does it, through the API
        answer = requests.put(
            f"{pipedrive.url}/api/v1/persons/{ann}/merge",
            json={"merge_with_id": kept},
            headers={"x-api-token": pipedrive.api_token},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text

    pipedrive.before_next(ACTIVITIES, merge, method="POST")
    for _ in range(2):
        ran = cli("sync", "--once")
        assert ran.code == 0, ran.err

    activity = _activity(pipedrive, keys[0])
    assert activity["person_id"] == kept
    assert [p["person_id"] for p in activity["participants"]] == [kept]  # type: ignore[attr-defined]
    assert _failed(cli) == []


@pytest.mark.pipedrive_only
def test_other_permanent_refusal_is_kept_visible_and_retried_on_demand(
    cli: Cli, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    pipedrive.add_person("Ann", [ANN])
    keys = _thread(google)
    connect(app, google)
    answer = "Activity type is deactivated: reactivate it under Company settings"
    refusal = Fault(
        path=ACTIVITIES,
        method="POST",
        status=400,
        times=1000,
        body=json.dumps(
            {
                "success": False,
                "error": answer,
                "error_info": "Please check developers.pipedrive.com for more information "
                "about Pipedrive API.",
                "data": None,
                "additional_data": None,
            }
        ),
    )
    pipedrive.faults.add(refusal)

    assert cli("sync", "--once").code == 0
    posts = pipedrive.meter.statuses[400]
    assert posts == 3  # one attempt each
    assert cli("sync", "--once").code == 0
    assert pipedrive.meter.statuses[400] == posts  # not retried: refused for good
    assert pipedrive.activities() == []

    accounts = json.loads(cli("accounts", "--json").out)
    assert accounts[0]["failed_deliveries"] == 3
    assert "3 failed CRM writes" in cli("accounts").out
    metrics = Metrics()
    metrics.watch_store(app.store)
    assert "maillink_outbox_failed 3.0" in metrics.render().decode()

    explained = cli("explain", f"<{keys[0]}>")
    assert explained.code == 0 and answer in explained.out
    as_json = json.loads(cli("explain", f"<{keys[0]}>", "--json").out)
    assert as_json["focus"] and as_json["messages"][0]["delivery"]["state"] == "failed"

    failed = _failed(cli)
    assert sorted(r["key"] for r in failed) == sorted(keys)
    assert all(answer in str(r["crm_answer"]) for r in failed)
    listed = cli("outbox", "list")
    assert keys[0] in listed.out and answer in listed.out

    pipedrive.faults.clear()  # the admin fixed the cause
    one = cli("outbox", "retry", f"<{keys[0]}>")  # as the mail shows it
    assert one.code == 0, one.err
    assert len(pipedrive.activities_with_key(keys[0])) == 1
    assert len(_failed(cli)) == 2
    rest = cli("outbox", "retry", "--all")
    assert rest.code == 0, rest.err
    assert all(len(pipedrive.activities_with_key(k)) == 1 for k in keys)
    assert _failed(cli) == []
    assert json.loads(cli("accounts", "--json").out)[0]["failed_deliveries"] == 0
    assert "maillink_outbox_failed 0.0" in metrics.render().decode()
    assert cli("outbox", "retry").code == 2  # neither a KEY nor --all
    unknown = cli("outbox", "retry", "nope@mail.example")
    assert unknown.code == 2 and "nope@mail.example" in unknown.err


@pytest.mark.pipedrive_only
def test_refused_write_is_not_sent_again_even_after_any_backoff(
    cli: Cli, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    pipedrive.add_person("Ann", [ANN])
    _thread(google, count=1)
    connect(app, google)
    body = {"success": False, "error": "Subject is too long", "data": None}
    pipedrive.faults.add(
        Fault(path=ACTIVITIES, method="POST", status=400, times=1000, body=json.dumps(body))
    )
    assert cli("sync", "--once").code == 0
    assert pipedrive.meter.statuses[400] == 1

    later = datetime.now(UTC) + timedelta(days=2)  # every retry backoff has long ended
    delivery = Outbox(app.store, app.crm, clock=lambda: later).deliver()
    assert pipedrive.meter.statuses[400] == 1  # not sent again
    assert delivery.created == 0 and delivery.errors == []


@pytest.mark.pipedrive_only
def test_refusal_is_decided_again_at_once_and_goes_to_the_threads_other_item(
    config: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    config.write_text(
        config.read_text().replace('multiple_open_items = "ask"', 'multiple_open_items = "newest"')
    )
    ann = pipedrive.add_person("Ann", [ANN])
    older = pipedrive.add_deal("Support", ann, add_time=NOW - timedelta(days=60))
    newer = pipedrive.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    keys = _thread(google)
    app = App(load_settings(config))
    try:
        connect(app, google)
        pipedrive.before_next(
            ACTIVITIES, lambda: pipedrive.set_deal_status(newer, "deleted", at=NOW), method="POST"
        )
        linker = app.linker()
        outbox = Outbox(app.store, app.crm, workers=1, redecide=linker.redecide)
        account = app.account(REP)
        result = Syncer(app.store, linker, outbox).run(account, app.provider_for(account))
    finally:
        app.close()

    assert result.error is None
    assert pipedrive.meter.statuses[400] == 1  # refused once, decided again, delivered
    for key in keys:  # in the same run: the thread's other candidate, not the deleted deal
        assert _activity(pipedrive, key)["deal_id"] == older


@pytest.mark.pipedrive_only
def test_update_of_an_activity_deleted_in_pipedrive_fails_visibly_and_retry_creates_it(
    cli: Cli, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    ann = pipedrive.add_person("Ann", [ANN])
    pipedrive.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    lead = pipedrive.add_lead("Upsell", ann, add_time=NOW - timedelta(days=30))
    (key,) = _thread(google, count=1)
    connect(app, google)
    assert cli("sync", "--once").code == 0  # two candidates: waiting, persons only
    first = _activity(pipedrive, key)
    pipedrive.delete_activity(int(str(first["id"])))  # a rep deletes it in Pipedrive

    thread = json.loads(cli("pending", "--json").out)[0]["thread"]
    chosen = cli("choose", str(thread), f"lead:{lead}")
    assert chosen.code == 0, chosen.err
    (failed,) = _failed(cli)
    assert failed["key"] == key and "Activity not found" in str(failed["crm_answer"])
    assert "outbox retry" in str(failed["crm_answer"])

    retried = cli("outbox", "retry", key)
    assert retried.code == 0, retried.err
    again = _activity(pipedrive, key)
    assert again["id"] != first["id"] and again["lead_id"] == lead
    assert _failed(cli) == []


@pytest.mark.pipedrive_only
def test_the_same_gone_refusal_twice_fails_for_good_instead_of_looping(
    cli: Cli, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    ann = pipedrive.add_person("Ann", [ANN])
    deal = pipedrive.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    (key,) = _thread(google, count=1)
    connect(app, google)
    # Pipedrive keeps listing the deal as open but refuses every write naming it.
    body = {"success": False, "error": f"Deal with id {deal} not found", "data": None}
    pipedrive.faults.add(
        Fault(path=ACTIVITIES, method="POST", status=400, times=1000, body=json.dumps(body))
    )
    for _ in range(3):
        assert cli("sync", "--once").code == 0

    assert pipedrive.meter.statuses[400] == 2  # refused, decided again (same write), refused
    (failed,) = _failed(cli)
    assert failed["key"] == key and failed["items"] == [f"deal:{deal}"]
    assert "again after deciding the thread again" in str(failed["crm_answer"])


@pytest.mark.pipedrive_only  # told by Pipedrive's webhook
@pytest.mark.parametrize("kind", ["deal", "lead"])
def test_item_deleted_later_keeps_the_delivered_link_and_stops_collecting(
    kind: str, cli: Cli, app: App, google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> None:
    """Rule 6 for a deleted deal (Pipedrive still lists it, as deleted) or lead (Pipedrive keeps
    no trace of it): the email whose activity Pipedrive already has linked to it keeps the link
    (nothing is rewritten), the email exchanged after the deletion does not."""
    ann = pipedrive.add_person("Ann", [ANN])
    created = NOW - timedelta(days=30)
    item: int | str
    if kind == "deal":
        item = pipedrive.add_deal("Licences", ann, add_time=created)
    else:
        item = pipedrive.add_lead("Licences", ann, add_time=created)
    field = f"{kind}_id"
    google.add_mailbox(REP)

    def email(key: str, when: datetime, thread: str | None) -> str:
        frm, to, labels = (ANN, REP, ("INBOX",)) if thread is None else (REP, ANN, ("SENT",))
        headers = [
            ("From", frm),
            ("To", to),
            ("Subject", "Quote"),
            ("Date", format_datetime(when)),
            ("Message-ID", f"<{key}>"),
        ]
        return google.add_message(
            REP, headers=headers, internal_date=when, thread_id=thread, label_ids=labels
        )

    thread = email("kept-0@mail.example", NOW - timedelta(days=3), None)
    connect(app, google)
    assert cli("sync", "--once").code == 0
    assert _activity(pipedrive, "kept-0@mail.example")[field] == item

    # A colleague deletes it; Pipedrive's webhook tells maillink (its caches forget it).
    if kind == "deal":
        pipedrive.set_deal_status(int(item), "deleted", at=NOW - timedelta(days=2))
    else:
        pipedrive.delete_lead(str(item))
    ops = create_ops_app(
        OpsContext(store=app.store, metrics=Metrics(), webhook=WebhookCredentials("pd", "pw"))
    ).test_client()
    event = {
        "meta": {"action": "delete", "entity": kind, "entity_id": str(item), "version": "2.0"},
        "data": None,
        "previous": {"id": item, "person_id": ann, "status": "open"},
    }
    token = base64.b64encode(b"pd:pw").decode()
    hooked = ops.post(
        "/webhooks/pipedrive", json=event, headers={"Authorization": f"Basic {token}"}
    )
    assert hooked.status_code == 200, hooked.text

    email("kept-1@mail.example", NOW - timedelta(days=1), thread)  # the rep answers later
    sent_before = len(pipedrive.received)
    ran = cli("sync", "--once")
    assert ran.code == 0, ran.err

    second = _activity(pipedrive, "kept-1@mail.example")
    assert second[field] is None and second["person_id"] == ann
    assert _activity(pipedrive, "kept-0@mail.example")[field] == item
    sent = list(pipedrive.received)[sent_before:]
    assert [r.method for r in sent if r.method in ("PATCH", "PUT")] == []
    assert _failed(cli) == []
    explained = json.loads(cli("explain", "<kept-0@mail.example>", "--json").out)
    assert explained["linked"] == f"{kind}:{item}"
    details = [m["detail"] for m in explained["messages"]]
    assert any("so it keeps the link" in d for d in details), details
    assert [m["delivery"]["state"] for m in explained["messages"]] == ["delivered", "delivered"]
