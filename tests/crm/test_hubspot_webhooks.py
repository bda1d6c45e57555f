"""HubSpot's webhooks at the daemon's endpoint: the v3 signature and its five minutes, the events
that make cached facts stale, and their effect on the next decision's facts. The HubSpot
sandbox signs and POSTs its events over real HTTP to the ops server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from tests.crm.hubspot_support import Clock, sandbox_fixtures

from maillink.crm.hubspot import HubSpotCRM
from maillink.crm.hubspot_webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BadEvents,
    Event,
    HubSpotWebhooks,
    SignatureRefused,
    parse_events,
    persons_of,
    signature_v3,
    verify_v3,
)
from maillink.linking.linker import CacheTTL, FactGatherer
from maillink.model import ItemStatus
from maillink.ops.metrics import Metrics
from maillink.ops.server import OpsContext, OpsServer, create_ops_app
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.sandbox.hubspot.webhooks import signature_v3 as sandbox_signature
from maillink.store import Store, cache, mirror
from maillink.sync import poll_crm_changes

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T0 = NOW - timedelta(days=60)


clock, server, sandbox = sandbox_fixtures(NOW)


@pytest.fixture
def crm(sandbox: HubSpotSandbox) -> HubSpotCRM:
    return HubSpotCRM(sandbox.url, access_token=sandbox.access_token, now=lambda: NOW)


class Endpoint:
    """The daemon's ops server, with HubSpot's webhooks configured."""

    def __init__(self, store: Store, receiver: HubSpotWebhooks) -> None:
        self.metrics = Metrics()
        ctx = OpsContext(store=store, metrics=self.metrics, hubspot_webhooks=receiver)
        self.server = OpsServer(create_ops_app(ctx), "127.0.0.1", 0).start()
        self.url = f"{self.server.url}/webhooks/hubspot"


@pytest.fixture
def endpoint(
    sqlite_store: Store, sandbox: HubSpotSandbox, crm: HubSpotCRM, clock: Clock
) -> Iterator[Endpoint]:
    receiver = HubSpotWebhooks(sandbox.client_secret, persons_of=persons_of(crm), now=clock)
    running = Endpoint(sqlite_store, receiver)
    yield running
    running.server.stop()


def _signed(secret: str, url: str, body: bytes, at: datetime) -> dict[str, str]:
    stamp = str(int(at.timestamp() * 1000))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: sandbox_signature(secret, "POST", url, body, stamp),
    }


# -- the signature -------------------------------------------------------------------------------


def test_the_signature_is_hubspots_v3_over_method_uri_body_and_timestamp() -> None:
    body = b'[{"objectId": 1}]'
    ours = signature_v3("secret", "POST", "https://m.example/webhooks/hubspot", body, "1700")
    assert ours == sandbox_signature(
        "secret", "POST", "https://m.example/webhooks/hubspot", body, "1700"
    )
    # HubSpot decodes these escapes of the URI before signing it.
    assert signature_v3("s", "POST", "https://m.example/a%3Ab", body, "1") == signature_v3(
        "s", "POST", "https://m.example/a:b", body, "1"
    )


@pytest.mark.parametrize(
    ("secret", "age", "why"),
    [
        ("wrong-secret", timedelta(0), "does not match"),
        ("the-secret", timedelta(minutes=6), "away"),
        ("the-secret", -timedelta(minutes=6), "away"),
    ],
)
def test_a_forged_or_old_signature_is_refused(secret: str, age: timedelta, why: str) -> None:
    url = "https://m.example/webhooks/hubspot"
    headers = _signed(secret, url, b"[]", NOW - age)
    with pytest.raises(SignatureRefused, match=why):
        verify_v3("the-secret", "POST", [url], b"[]", headers, NOW)


def test_a_request_without_the_headers_is_refused() -> None:
    with pytest.raises(SignatureRefused, match="missing"):
        verify_v3("s", "POST", ["https://m.example/"], b"[]", {}, NOW)


def test_behind_a_proxy_the_public_url_is_the_one_signed() -> None:
    public = "https://maillink.example.com/webhooks/hubspot"
    receiver = HubSpotWebhooks("s", public_url="https://maillink.example.com", now=lambda: NOW)
    headers = _signed("s", public, b"[]", NOW)
    receiver.verify(
        "POST", "http://127.0.0.1:8780/webhooks/hubspot", "/webhooks/hubspot", b"[]", headers
    )
    with pytest.raises(SignatureRefused):
        HubSpotWebhooks("s", now=lambda: NOW).verify(
            "POST", "http://127.0.0.1:8780/webhooks/hubspot", "/webhooks/hubspot", b"[]", headers
        )


# -- the events ----------------------------------------------------------------------------------


def test_events_that_do_not_concern_linking_change_nothing() -> None:
    receiver = HubSpotWebhooks("s")
    events = [
        Event("deal", "propertyChange", 5, "amount", "100"),
        Event("contact", "propertyChange", 6, "firstname", "Ann"),
        Event("company", "creation", 7),
    ]
    assert receiver.changes(events) == []


def test_deal_events_without_a_way_to_read_contacts_forget_every_item() -> None:
    [change] = HubSpotWebhooks("s").changes([Event("deal", "propertyChange", 5, "dealstage", "x")])
    assert change.everyone


def test_a_deleted_deal_and_a_changed_address_forget_everything() -> None:
    receiver = HubSpotWebhooks("s", persons_of=lambda kind, ids: {1})
    deleted, moved = receiver.changes(
        [Event("deal", "deletion", 5), Event("contact", "propertyChange", 9, "email", "a@b.c")]
    )
    assert deleted.everyone and moved.everyone and moved.person_ids == {9}


def test_a_merge_of_contacts_forgets_both_contacts_and_every_address() -> None:
    event = {
        "subscriptionType": "contact.merge",
        "objectId": 12,
        "primaryObjectId": 12,
        "mergedObjectIds": [11],
        "newObjectId": 12,
    }
    [change] = HubSpotWebhooks("s").changes(parse_events([event]))
    assert change.everyone and change.person_ids == {11, 12}


@pytest.mark.parametrize("payload", [{"objectId": 1}, [1], [{"subscriptionType": "deal.creation"}]])
def test_a_body_that_is_not_hubspot_events_is_refused(payload: object) -> None:
    with pytest.raises(BadEvents):
        parse_events(payload)


# -- end to end ----------------------------------------------------------------------------------


def test_a_won_deal_reaches_the_next_decision_through_a_signed_webhook(
    sqlite_store: Store, sandbox: HubSpotSandbox, crm: HubSpotCRM, endpoint: Endpoint
) -> None:
    ann = sandbox.add_contact("ann@customer.example", "Ann", "Lee")
    bob = sandbox.add_contact("bob@other.example", "Bob", "Ray")
    deal = sandbox.add_deal("Licences", ann, add_time=T0)
    for name in ("dealstage", "hs_is_closed", "closedate"):
        sandbox.webhooks.subscribe(endpoint.url, "deal.propertyChange", name)
    gatherer = FactGatherer(sqlite_store, crm, CacheTTL(), clock=lambda: NOW)
    emails = ["ann@customer.example", "bob@other.example"]
    [before] = gatherer.gather(emails).items_by_person[ann]
    assert before.status is ItemStatus.OPEN

    sandbox.close_deal(deal, won=True, at=NOW - timedelta(hours=1))
    stale = gatherer.gather(emails).items_by_person[ann][0]
    assert stale.status is ItemStatus.OPEN  # cached: without the webhook, not seen yet

    statuses = sandbox.webhooks.deliver()
    assert statuses and all(s == 204 for s in statuses)
    with sqlite_store.engine.connect() as conn:
        assert cache.fresh_items(conn, [ann, bob], NOW, CacheTTL().items).keys() == {bob}
        assert mirror.stale(conn, [f"person:{ann}", f"person:{bob}"]) == {f"person:{ann}"}
    [after] = gatherer.gather(emails).items_by_person[ann]
    assert after.status is ItemStatus.WON
    assert endpoint.metrics.crm_changes.labels("webhook")._value.get() == 1


def test_a_forged_or_replayed_old_webhook_is_refused_and_changes_nothing(
    sqlite_store: Store, sandbox: HubSpotSandbox, endpoint: Endpoint, clock: Clock
) -> None:
    with sqlite_store.transaction() as conn:
        cache.put_items(conn, {1: []}, NOW)
    body = json.dumps(
        [{"subscriptionType": "deal.deletion", "objectId": 5, "occurredAt": 1, "eventId": 1}]
    ).encode()
    forged = _signed("not-the-secret", endpoint.url, body, NOW)
    old = _signed(sandbox.client_secret, endpoint.url, body, NOW - timedelta(minutes=6))
    for headers in (forged, old, {"Content-Type": "application/json"}):
        answer = requests.post(endpoint.url, data=body, headers=headers, timeout=10)
        assert answer.status_code == 401
    tampered = _signed(sandbox.client_secret, endpoint.url, body, NOW)
    answer = requests.post(endpoint.url, data=body + b" ", headers=tampered, timeout=10)
    assert answer.status_code == 401
    with sqlite_store.engine.connect() as conn:
        assert cache.fresh_items(conn, [1], NOW, CacheTTL().items) == {1: []}
    signed = _signed(sandbox.client_secret, endpoint.url, body, clock.now)
    answer = requests.post(endpoint.url, data=body, headers=signed, timeout=10)
    assert answer.status_code == 204  # the same body, signed now, is HubSpot's
    with sqlite_store.engine.connect() as conn:
        assert cache.fresh_items(conn, [1], NOW, CacheTTL().items) == {}


def test_without_hubspot_webhooks_configured_the_endpoint_is_not_there(
    sqlite_store: Store,
) -> None:
    client = create_ops_app(OpsContext(store=sqlite_store, metrics=Metrics())).test_client()
    assert client.post("/webhooks/hubspot", data=b"[]").status_code == 404


def test_without_an_app_the_daemons_poll_reads_hubspots_changes(
    sqlite_store: Store, sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@customer.example", "Ann", "Lee")
    deal = sandbox.add_deal("Licences", ann, add_time=T0)
    assert poll_crm_changes(sqlite_store, crm, now=NOW - timedelta(hours=2)) == 0  # starts
    with sqlite_store.transaction() as conn:
        cache.put_items(conn, {ann: []}, NOW)
    sandbox.close_deal(deal, won=True, at=NOW - timedelta(minutes=30))
    sandbox.catch_up_search_index()
    assert poll_crm_changes(sqlite_store, crm, now=NOW) >= 1
    with sqlite_store.engine.connect() as conn:
        assert cache.fresh_items(conn, [ann], NOW, CacheTTL().items) == {}
