"""Deleted items and CRM refusals (issue 9 §1), as a user meets them: the CLI in a subprocess,
the CRM's sandbox changing under it over real HTTP. Every test runs on Pipedrive and on HubSpot
(`both_crms`), seeded and faulted the same way through `CrmSandbox`, with the same outcomes.

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
from tests.e2e.conftest import Ran
from tests.e2e.support import NOW, REP, CrmSandbox, both_crms, connect

from maillink.app import App
from maillink.config import WebhookCredentials, load_settings
from maillink.crm.hubspot_webhooks import HubSpotWebhooks
from maillink.ops.metrics import Metrics
from maillink.ops.server import OpsContext, OpsServer, create_ops_app
from maillink.outbox import Outbox
from maillink.sandbox.google import GoogleSandbox
from maillink.sync import Syncer

ANN = "ann@customer.example"
Cli = Callable[..., Ran]


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
    # The same reason on both CRMs: a deleted deal is no candidate, as if it did not exist.
    assert {m["reason"] for m in explained["messages"]} == {"no_open_items"}
    if crm.kind == "pipedrive":  # Pipedrive still lists the deleted deal: explain names it
        assert f"deal:{deal} 'Licences' was deleted" in explained["messages"][0]["detail"]
    else:  # HubSpot's delete archives: the deal is not read at all
        assert "have no lead, deal or project" in explained["messages"][0]["detail"]


def _deleted_reason(crm: CrmSandbox) -> str:
    """The reason given for an email after its thread's deal was deleted (as the first test of
    this module pins it): the same on both CRMs."""
    return "no_open_items"


@both_crms
def test_deal_deleted_between_decision_and_delivery_is_decided_again(
    cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    keys = _thread(google)
    connect(app, google)
    # The rep's colleague deletes the deal after maillink decided, just before its first write.
    crm.before_next_create(lambda: crm.delete_item("deal", deal, NOW))

    for _ in range(2):  # the refusal is decided again in this run or, at the latest, the next
        ran = cli("sync", "--once")
        assert ran.code == 0, ran.err

    assert crm.refusals >= 1, "the CRM refused the write naming the deal"
    for key in keys:
        email = crm.email(key)
        assert email.items == set() and email.persons == {ann}
    assert _failed(cli) == []
    explained = json.loads(cli("explain", f"<{keys[0]}>", "--json").out)
    history = [h["reason"] for h in explained["messages"][0]["history"]]
    assert history[0] == "single_open_item" and history[-1] == _deleted_reason(crm)
    assert explained["messages"][0]["delivery"]["state"] == "delivered"


@both_crms
def test_person_merged_into_another_between_decision_and_delivery(
    cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    """Pipedrive's merge leaves no trace of the merged-away person; HubSpot's keeps its id
    answering as the contact kept, whose secondary email the address becomes. Either way the
    write naming the merged-away person is refused, and the email goes to the one kept."""
    ann = crm.add_person("Ann", [ANN])
    kept = crm.add_person("Ann Lee", ["ann.lee@customer.example"])
    keys = _thread(google, count=1)
    connect(app, google)
    crm.before_next_create(lambda: crm.merge_persons(ann, kept))  # through the CRM's API

    for _ in range(2):
        ran = cli("sync", "--once")
        assert ran.code == 0, ran.err

    assert crm.refusals >= 1, "the CRM refused the write naming the merged-away person"
    assert crm.email(keys[0]).persons == {kept}
    assert _failed(cli) == []


@both_crms
def test_other_permanent_refusal_is_kept_visible_and_retried_on_demand(
    cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    crm.add_person("Ann", [ANN])
    keys = _thread(google)
    connect(app, google)
    answer = {
        "pipedrive": "Activity type is deactivated: reactivate it under Company settings",
        "hubspot": "Email logging is turned off: turn it on under Settings, Objects, Activities",
    }[crm.kind]
    crm.refuse_creates(answer)

    assert cli("sync", "--once").code == 0
    posts = crm.refusals
    # One attempt each; HubSpot's batch of three is refused whole, then its halves, until each
    # email stands alone (batch, 1 + 2, 1 + 1).
    assert posts == (3 if crm.kind == "pipedrive" else 5)
    assert cli("sync", "--once").code == 0
    assert crm.refusals == posts  # not retried: refused for good
    assert crm.emails() == []

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

    crm.stop_refusing()  # the admin fixed the cause
    one = cli("outbox", "retry", f"<{keys[0]}>")  # as the mail shows it
    assert one.code == 0, one.err
    assert len(crm.emails_with_key(keys[0])) == 1
    assert len(_failed(cli)) == 2
    rest = cli("outbox", "retry", "--all")
    assert rest.code == 0, rest.err
    assert all(len(crm.emails_with_key(k)) == 1 for k in keys)
    assert _failed(cli) == []
    assert json.loads(cli("accounts", "--json").out)[0]["failed_deliveries"] == 0
    assert "maillink_outbox_failed 0.0" in metrics.render().decode()
    assert cli("outbox", "retry").code == 2  # neither a KEY nor --all
    unknown = cli("outbox", "retry", "nope@mail.example")
    assert unknown.code == 2 and "nope@mail.example" in unknown.err


@both_crms
def test_refused_write_is_not_sent_again_even_after_any_backoff(
    cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    crm.add_person("Ann", [ANN])
    _thread(google, count=1)
    connect(app, google)
    crm.refuse_creates("Subject is too long")
    assert cli("sync", "--once").code == 0
    assert crm.refusals == 1

    later = datetime.now(UTC) + timedelta(days=2)  # every retry backoff has long ended
    delivery = Outbox(app.store, app.crm, clock=lambda: later).deliver()
    assert crm.refusals == 1  # not sent again
    assert delivery.created == 0 and delivery.errors == []


@both_crms
def test_refusal_is_decided_again_at_once_and_goes_to_the_threads_other_item(
    config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    config.write_text(
        config.read_text().replace('multiple_open_items = "ask"', 'multiple_open_items = "newest"')
    )
    ann = crm.add_person("Ann", [ANN])
    older = crm.add_deal("Support", ann, add_time=NOW - timedelta(days=60))
    newer = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    keys = _thread(google)
    app = App(load_settings(config))
    try:
        connect(app, google)
        crm.before_next_create(lambda: crm.delete_item("deal", newer, NOW))
        linker = app.linker()
        outbox = Outbox(app.store, app.crm, workers=1, redecide=linker.redecide)
        account = app.account(REP)
        result = Syncer(app.store, linker, outbox).run(account, app.provider_for(account))
    finally:
        app.close()

    assert result.error is None
    # Refused once (HubSpot: the one batch of the thread's three emails), decided again,
    # delivered.
    assert crm.refusals == 1
    for key in keys:  # in the same run: the thread's other candidate, not the deleted deal
        assert crm.email(key).item("deal") == str(older)


@both_crms
def test_update_of_an_email_deleted_in_the_crm_fails_visibly_and_retry_creates_it(
    cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    ann = crm.add_person("Ann", [ANN])
    crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    lead = crm.add_lead("Upsell", ann, add_time=NOW - timedelta(days=30))
    (key,) = _thread(google, count=1)
    connect(app, google)
    assert cli("sync", "--once").code == 0  # two candidates: waiting, persons only
    first = crm.email(key)
    crm.delete_email(first.id)  # a rep deletes it in the CRM

    thread = json.loads(cli("pending", "--json").out)[0]["thread"]
    chosen = cli("choose", str(thread), f"lead:{lead}")
    assert chosen.code == 0, chosen.err
    (failed,) = _failed(cli)
    gone = {"pipedrive": "Activity not found", "hubspot": f"HubSpot has no email {first.id}"}
    assert failed["key"] == key and gone[crm.kind] in str(failed["crm_answer"])
    assert "outbox retry" in str(failed["crm_answer"])

    retried = cli("outbox", "retry", key)
    assert retried.code == 0, retried.err
    again = crm.email(key)
    assert again.id != first.id and again.item("lead") == lead
    assert _failed(cli) == []


@both_crms
def test_the_same_gone_refusal_twice_fails_for_good_instead_of_looping(
    cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    (key,) = _thread(google, count=1)
    connect(app, google)
    # The CRM keeps listing the deal as open but refuses every write naming it.
    crm.refuse_creates(
        {
            "pipedrive": f"Deal with id {deal} not found",
            "hubspot": f"One or more associations are invalid: deals {deal} does not exist",
        }[crm.kind]
    )
    for _ in range(3):
        assert cli("sync", "--once").code == 0

    assert crm.refusals == 2  # refused, decided again (same write), refused
    (failed,) = _failed(cli)
    assert failed["key"] == key and failed["items"] == [f"deal:{deal}"]
    assert "again after deciding the thread again" in str(failed["crm_answer"])


class _Told:
    """Tells maillink that a deal or lead was deleted, by the CRM's own webhook: Pipedrive's
    (basic auth) to the daemon's endpoint, HubSpot's (`deal.deletion`, `lead.deletion`, signed
    with the public app's secret) POSTed by the sandbox to a running daemon endpoint."""

    def __init__(self, crm: CrmSandbox, app: App, kind: str) -> None:
        self.crm, self.kind = crm, kind
        self.server: OpsServer | None = None
        if crm.kind == "hubspot":
            receiver = HubSpotWebhooks(crm.sandbox.client_secret)
            context = OpsContext(store=app.store, metrics=Metrics(), hubspot_webhooks=receiver)
            self.server = OpsServer(create_ops_app(context), "127.0.0.1", 0).start()
            crm.sandbox.webhooks.subscribe(
                f"{self.server.url}/webhooks/hubspot", f"{kind}.deletion"
            )
        else:
            context = OpsContext(
                store=app.store, metrics=Metrics(), webhook=WebhookCredentials("pd", "pw")
            )
            self.pipedrive = create_ops_app(context).test_client()

    def deleted(self, item: int | str, person: int) -> None:
        if self.server is not None:
            assert self.crm.sandbox.webhooks.deliver() == [204]  # accepted, nothing to say
            return
        event = {
            "meta": {
                "action": "delete",
                "entity": self.kind,
                "entity_id": str(item),
                "version": "2.0",
            },
            "data": None,
            "previous": {"id": item, "person_id": person, "status": "open"},
        }
        token = base64.b64encode(b"pd:pw").decode()
        hooked = self.pipedrive.post(
            "/webhooks/pipedrive", json=event, headers={"Authorization": f"Basic {token}"}
        )
        assert hooked.status_code == 200, hooked.text

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


@both_crms
@pytest.mark.parametrize("told", ["webhook", "no_webhook"])
@pytest.mark.parametrize("kind", ["deal", "lead"])
def test_item_deleted_later_keeps_the_delivered_link_and_stops_collecting(
    kind: str, told: str, cli: Cli, app: App, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    """Rule 6 for a deleted deal (Pipedrive still lists it, as deleted; HubSpot archives it) or
    lead (Pipedrive keeps no trace of it; HubSpot archives it): the email the CRM already has
    linked to it keeps the link (nothing is rewritten), the email exchanged after the deletion
    does not. Told by the CRM's webhook, or not told at all (no app configured)."""
    ann = crm.add_person("Ann", [ANN])
    created = NOW - timedelta(days=30)
    item: int | str
    if kind == "deal":
        item = crm.add_deal("Licences", ann, add_time=created)
    else:
        item = crm.add_lead("Licences", ann, add_time=created)
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
    first = crm.email("kept-0@mail.example")
    assert first.item(kind) == str(item)

    # A colleague deletes it; the CRM's webhook tells maillink (its caches forget it), or not.
    if told == "webhook":
        hooks = _Told(crm, app, kind)
        try:
            crm.delete_item(kind, item, NOW - timedelta(days=2))
            hooks.deleted(item, ann)
        finally:
            hooks.close()
    else:
        crm.delete_item(kind, item, NOW - timedelta(days=2))

    email("kept-1@mail.example", NOW - timedelta(days=1), thread)  # the rep answers later
    mark, refused = crm.received(), crm.refusals
    ran = cli("sync", "--once")
    assert ran.code == 0, ran.err
    if told == "webhook" or crm.kind == "pipedrive":
        # Told in time (Pipedrive's listing at the start of the run shows the deletion too):
        # no write named the deleted item.
        assert crm.refusals == refused
    else:  # HubSpot's search never shows archived records: the refused write tells maillink
        assert crm.refusals == refused + 1

    second = crm.email("kept-1@mail.example")
    assert second.items == set() and second.persons == {ann}
    assert crm.updates_since(mark) == []  # the first email is not rewritten
    if crm.kind == "pipedrive":
        assert crm.email("kept-0@mail.example").item(kind) == str(item)
    else:  # HubSpot hides an archived record's associations; restoring it shows them again
        kind_type = f"{kind}s"
        links = crm.sandbox.records.links
        assert ("emails", int(first.id), kind_type, int(item)) in links
    assert _failed(cli) == []
    explained = json.loads(cli("explain", "<kept-0@mail.example>", "--json").out)
    assert explained["linked"] == f"{kind}:{item}"
    details = [m["detail"] for m in explained["messages"]]
    assert any("so it keeps the link" in d for d in details), details
    assert [m["delivery"]["state"] for m in explained["messages"]] == ["delivered", "delivered"]
