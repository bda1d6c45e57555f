"""The daemon's HTTP endpoint: health, metrics, the Pipedrive webhook (auth, payloads, caches) and
the Gmail push wake-up."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select

from maillink.config import WebhookCredentials
from maillink.model import Item, ItemRef, ItemStatus, Person
from maillink.ops.metrics import Metrics
from maillink.ops.server import OpsContext, create_ops_app
from maillink.ops.webhooks import BadPayload, gmail_push, pipedrive_change
from maillink.store import Store, accounts, cache, leases
from maillink.store.schema import item_cache, person_cache

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
USER, PASSWORD = "pipedrive", "a-long-webhook-password"
PUSH_TOKEN = "a-long-push-token-0123"


class Calls:
    def __init__(self) -> None:
        self.woken: list[int] = []
        self.alive = True


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def client(sqlite_store: Store, calls: Calls) -> FlaskClient:
    metrics = Metrics()
    metrics.watch_store(sqlite_store)
    ctx = OpsContext(
        store=sqlite_store,
        metrics=metrics,
        webhook=WebhookCredentials(USER, PASSWORD),
        gmail_push_token=PUSH_TOKEN,
        wake=calls.woken.append,
        status=lambda: {"owner": "host-1-abc", "leases_held": [3]},
        alive=lambda: calls.alive,
    )
    return create_ops_app(ctx).test_client()


def _auth(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _event(
    entity: str, action: str, data: Any, previous: Any = None, **meta: Any
) -> dict[str, Any]:
    return {
        "meta": {
            "action": action,
            "entity": entity,
            "entity_id": str((data or previous or {}).get("id", "")),
            "version": "2.0",
            "timestamp": 1772442000,
            **meta,
        },
        "data": data,
        "previous": previous,
    }


def _cache_everyone(store: Store) -> None:
    ann = Person(1, "Ann", ("ann@customer.example",))
    bob = Person(2, "Bob", ("bob@customer.example",))
    deal = Item(ItemRef.parse("deal:7"), "Licences", frozenset({1}), T0, ItemStatus.OPEN, None)
    with store.transaction() as conn:
        cache.put_persons(conn, {"ann@customer.example": [ann], "bob@customer.example": [bob]}, T0)
        cache.put_items(conn, {1: [deal], 2: []}, T0)


def _cached(store: Store) -> tuple[set[str], set[int]]:
    """The addresses and persons whose cached facts are still trusted (not forgotten)."""
    with store.engine.connect() as conn:
        emails = set(conn.execute(select(person_cache.c.email)).scalars())
        persons = set(conn.execute(select(item_cache.c.person_id)).scalars())
        now, ttl = T0 + timedelta(seconds=1), timedelta(days=1)
        return (
            set(cache.fresh_persons(conn, emails, now, ttl)),
            set(cache.fresh_items(conn, persons, now, ttl)),
        )


# -- health and metrics -----------------------------------------------------------------------


def test_healthz_says_ok_when_the_store_answers_and_the_loop_is_alive(
    client: FlaskClient, calls: Calls
) -> None:
    ok = client.get("/healthz")
    assert ok.status_code == 200
    assert ok.json == {
        "status": "ok",
        "database": "ok",
        "loop": "ok",
        "owner": "host-1-abc",
        "leases_held": [3],
    }
    calls.alive = False
    stalled = client.get("/healthz")
    assert stalled.status_code == 503 and stalled.json["loop"] == "stalled"


def test_healthz_is_503_when_the_store_is_unreachable(
    client: FlaskClient, sqlite_store: Store
) -> None:
    import sqlalchemy

    sqlite_store.engine = sqlalchemy.create_engine("sqlite:////nonexistent/folder/x.db")
    down = client.get("/healthz")
    assert down.status_code == 503
    assert down.json["database"] == "unreachable" and down.json["status"] == "unhealthy"


def test_metrics_are_in_prometheus_text_format_with_the_store_gauges(
    client: FlaskClient, sqlite_store: Store
) -> None:
    with sqlite_store.transaction() as conn:
        account = accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        accounts.synced(conn, account.id)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    for name in (
        "maillink_messages_synced_total",
        "maillink_links_total",
        "maillink_api_requests_total",
        "maillink_api_retries_total",
        "maillink_api_throttled_total",
        "maillink_lease_takeovers_total",
        "maillink_outbox_pending 0.0",
        f'maillink_last_successful_sync_timestamp_seconds{{account_id="{account.id}"}}',
    ):
        assert name in text, name


def test_api_answers_are_counted_by_service_and_status() -> None:
    from maillink.ops.metrics import ObservedRetryPolicy
    from maillink.providers.retry import Failure

    metrics = Metrics()
    policy = ObservedRetryPolicy(metrics=metrics, sleep=lambda s: None)
    answers = iter([Failure(status=429, retry_after=0), None])

    class Throttled(Exception):
        pass

    def call() -> str:
        failure = next(answers)
        if failure is not None:
            raise Throttled()
        return "ok"

    assert policy.call(call, classify=lambda e: Failure(status=429, retry_after=0)) == "ok"
    text = metrics.render().decode()
    assert 'maillink_api_requests_total{service="gmail",status="429"} 1.0' in text
    assert 'maillink_api_requests_total{service="gmail",status="200"} 1.0' in text
    assert 'maillink_api_retries_total{service="gmail",status="429"} 1.0' in text
    assert 'maillink_api_throttled_total{service="gmail"} 1.0' in text


# -- the Pipedrive webhook --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, _auth(password="wrong-password-000"), _auth(user="other"), {"Authorization": "Bearer x"}],
    ids=["none", "wrong-password", "wrong-user", "not-basic"],
)
def test_the_webhook_refuses_wrong_credentials(
    client: FlaskClient, sqlite_store: Store, headers: dict[str, str]
) -> None:
    _cache_everyone(sqlite_store)
    event = _event("deal", "change", {"id": 7, "person_id": 1, "status": "won"})
    response = client.post("/webhooks/pipedrive", json=event, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert _cached(sqlite_store) == ({"ann@customer.example", "bob@customer.example"}, {1, 2})


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"event": "updated.deal", "current": {}}),  # a v1 payload
        json.dumps({"meta": {"entity": "deal"}, "data": {}}),
        json.dumps({"meta": {"entity": "deal", "action": "change"}, "data": [1]}),
    ],
    ids=["not-json", "not-object", "v1", "no-action", "data-not-object"],
)
def test_a_malformed_webhook_is_400_without_a_traceback(client: FlaskClient, body: str) -> None:
    response = client.post(
        "/webhooks/pipedrive", data=body, headers=_auth(), content_type="application/json"
    )
    assert response.status_code == 400
    assert "Traceback" not in response.get_data(as_text=True)
    assert response.json and response.json["error"]


def test_a_deal_won_forgets_the_items_of_its_person_only(
    client: FlaskClient, sqlite_store: Store
) -> None:
    _cache_everyone(sqlite_store)
    event = _event(
        "deal",
        "change",
        {"id": 7, "person_id": 1, "status": "won", "won_time": "2026-03-02T08:00:00Z"},
        {"status": "open"},
    )
    response = client.post("/webhooks/pipedrive", json=event, headers=_auth())
    assert response.status_code == 200 and response.json["persons"] == 1
    emails, persons = _cached(sqlite_store)
    assert persons == {2}  # Ann's items are read again; Bob's stay cached
    assert emails == {"ann@customer.example", "bob@customer.example"}


def test_a_deal_moved_to_another_person_forgets_both(
    client: FlaskClient, sqlite_store: Store
) -> None:
    _cache_everyone(sqlite_store)
    event = _event("deal", "change", {"id": 7, "person_id": 2}, {"person_id": 1})
    assert client.post("/webhooks/pipedrive", json=event, headers=_auth()).status_code == 200
    assert _cached(sqlite_store)[1] == set()


def test_a_deleted_deal_is_known_by_its_previous_state(
    client: FlaskClient, sqlite_store: Store
) -> None:
    _cache_everyone(sqlite_store)
    event = _event("deal", "delete", None, {"id": 7, "person_id": 1, "status": "open"})
    assert client.post("/webhooks/pipedrive", json=event, headers=_auth()).status_code == 200
    assert _cached(sqlite_store)[1] == {2}


def test_a_deleted_item_whose_person_is_unknown_forgets_every_item(
    client: FlaskClient, sqlite_store: Store
) -> None:
    _cache_everyone(sqlite_store)
    event = _event("lead", "delete", None, None, entity_id="4f1c-lead")
    response = client.post("/webhooks/pipedrive", json=event, headers=_auth())
    assert response.status_code == 200 and response.json["all_items"] is True
    assert _cached(sqlite_store) == (set(), set())


def test_a_converted_lead_forgets_its_person(client: FlaskClient, sqlite_store: Store) -> None:
    _cache_everyone(sqlite_store)
    lead = {"id": "4f1c", "person_id": 2, "is_archived": True}
    event = _event("lead", "change", lead, {"is_archived": False})
    assert client.post("/webhooks/pipedrive", json=event, headers=_auth()).status_code == 200
    assert _cached(sqlite_store)[1] == {1}


def test_a_person_whose_addresses_changed_is_looked_up_again(
    client: FlaskClient, sqlite_store: Store
) -> None:
    _cache_everyone(sqlite_store)
    data = {"id": 1, "emails": [{"label": "work", "value": "ann@new.example", "primary": True}]}
    previous = {"emails": [{"label": "work", "value": "Ann@Customer.example", "primary": True}]}
    event = _event("person", "change", data, previous)
    assert client.post("/webhooks/pipedrive", json=event, headers=_auth()).status_code == 200
    emails, persons = _cached(sqlite_store)
    assert emails == {"bob@customer.example"}
    assert persons == {2}


def test_events_that_do_not_concern_linking_are_acknowledged_and_ignored(
    client: FlaskClient, sqlite_store: Store
) -> None:
    _cache_everyone(sqlite_store)
    event = _event("activity", "create", {"id": 99, "person_id": 1})
    response = client.post("/webhooks/pipedrive", json=event, headers=_auth())
    assert response.status_code == 200 and response.json["ignored"] is True
    assert _cached(sqlite_store)[1] == {1, 2}


def test_the_webhook_is_404_until_configured(sqlite_store: Store) -> None:
    client = create_ops_app(OpsContext(store=sqlite_store, metrics=Metrics())).test_client()
    event = _event("deal", "change", {"id": 7, "person_id": 1})
    assert client.post("/webhooks/pipedrive", json=event, headers=_auth()).status_code == 404
    assert client.post("/push/gmail?token=x", json={}).status_code == 404


def test_unknown_paths_and_methods_are_short_json_errors(client: FlaskClient) -> None:
    assert client.get("/nope").status_code == 404
    wrong = client.get("/webhooks/pipedrive")
    assert wrong.status_code == 405 and wrong.json == {"error": "Method Not Allowed"}


def test_v2_payload_parsing_takes_person_ids_in_every_shape() -> None:
    change = pipedrive_change(_event("deal", "change", {"id": 1, "person_id": {"value": 5}}))
    assert change is not None and change.person_ids == {5}
    with pytest.raises(BadPayload):
        pipedrive_change({"meta": None})


# -- the Gmail push ---------------------------------------------------------------------------


def _push(email: str, history_id: int = 12345) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"emailAddress": email, "historyId": history_id}).encode())
    return {
        "message": {"data": data.decode(), "messageId": "1", "publishTime": "2026-03-02T09:00:00Z"},
        "subscription": "projects/acme/subscriptions/maillink",
    }


def test_a_gmail_push_wakes_its_mailbox(
    client: FlaskClient, sqlite_store: Store, calls: Calls
) -> None:
    with sqlite_store.transaction() as conn:
        account = accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
    response = client.post(f"/push/gmail?token={PUSH_TOKEN}", json=_push("Rep@acme.example"))
    assert response.status_code == 204
    assert calls.woken == [account.id]


def test_a_gmail_push_for_an_unknown_mailbox_is_acknowledged(
    client: FlaskClient, calls: Calls
) -> None:
    response = client.post(f"/push/gmail?token={PUSH_TOKEN}", json=_push("nobody@acme.example"))
    assert response.status_code == 204 and calls.woken == []


def test_a_gmail_push_needs_the_token_and_a_pubsub_envelope(
    client: FlaskClient, calls: Calls
) -> None:
    assert client.post("/push/gmail?token=wrong", json=_push("rep@acme.example")).status_code == 403
    assert client.post("/push/gmail", json=_push("rep@acme.example")).status_code == 403
    bad = client.post(f"/push/gmail?token={PUSH_TOKEN}", json={"message": {"data": "%%%"}})
    assert bad.status_code == 400
    assert calls.woken == []


def test_pubsub_data_may_be_urlsafe_base64() -> None:
    raw = json.dumps({"emailAddress": "rep@acme.example", "historyId": "9"}).encode()
    envelope = {"message": {"data": base64.urlsafe_b64encode(raw).decode().rstrip("=")}}
    assert gmail_push(envelope).email == "rep@acme.example"


def test_a_wake_makes_the_mailbox_due_now(sqlite_store: Store) -> None:
    with sqlite_store.transaction() as conn:
        account = accounts.upsert(conn, "rep@acme.example", "gmail", "t", "s")
        leases.ensure(conn, T0)
        (lease,) = leases.acquire(conn, "me", now=T0, duration=timedelta(seconds=30), limit=1)
        leases.release(conn, lease, next_run_at=T0 + timedelta(minutes=5), failures=0)
        assert leases.acquire(conn, "me", now=T0, duration=timedelta(seconds=30), limit=1) == []
        assert leases.wake(conn, account.id, T0)
        assert len(leases.acquire(conn, "me", now=T0, duration=timedelta(seconds=30), limit=1)) == 1


# -- issue 9 §5: bodies are capped, deep JSON is refused (through HTTP, against the ops server) ---


@pytest.fixture
def ops_url(sqlite_store: Store, calls: Calls) -> Iterator[str]:
    from maillink.ops.server import OpsServer

    ctx = OpsContext(
        store=sqlite_store,
        metrics=Metrics(),
        webhook=WebhookCredentials(USER, PASSWORD),
        gmail_push_token=PUSH_TOKEN,
        wake=calls.woken.append,
    )
    server = OpsServer(create_ops_app(ctx), "127.0.0.1", 0).start()
    try:
        yield server.url
    finally:
        server.stop()


PATHS = {"pipedrive": "/webhooks/pipedrive", "gmail": f"/push/gmail?token={PUSH_TOKEN}"}


@pytest.mark.parametrize("endpoint", sorted(PATHS))
@pytest.mark.parametrize("depth", [100, 5000, 100_000])
def test_deeply_nested_json_is_400_not_500(ops_url: str, endpoint: str, depth: int) -> None:
    body = "[" * depth + "]" * depth
    answer = requests.post(
        ops_url + PATHS[endpoint],
        data=body,
        headers={**_auth(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]


def test_deep_json_inside_a_gmail_push_is_400(ops_url: str, calls: Calls) -> None:
    data = base64.b64encode(("[" * 5000 + "]" * 5000).encode()).decode()
    answer = requests.post(ops_url + PATHS["gmail"], json={"message": {"data": data}}, timeout=30)
    assert answer.status_code == 400 and calls.woken == []


@pytest.mark.parametrize("endpoint", sorted(PATHS))
def test_a_body_declared_too_large_is_413_before_it_is_read(ops_url: str, endpoint: str) -> None:
    parts = urlsplit(ops_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.putrequest("POST", PATHS[endpoint])
        for name, value in {**_auth(), "Content-Type": "application/json"}.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(10**9))  # nothing of it is ever sent
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 413
        assert "larger than" in json.loads(answer.read())["error"]
    finally:
        conn.close()


@pytest.mark.parametrize("endpoint", sorted(PATHS))
def test_a_chunked_body_is_cut_at_the_cap_and_413(ops_url: str, endpoint: str) -> None:
    chunk = b" " * 16384
    count = 20  # 320 KB of JSON whitespace, over the 256 KB cap, with no Content-Length

    def body() -> Iterator[bytes]:
        yield b"{"
        for _ in range(count):
            yield chunk
        yield b"}"

    answer = requests.post(
        ops_url + PATHS[endpoint],
        data=body(),
        headers={**_auth(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 413, answer.text


def test_a_webhook_under_the_cap_still_works(ops_url: str, sqlite_store: Store) -> None:
    event = _event("deal", "change", {"id": 7, "person_id": 1, "status": "won"})
    event["padding"] = "x" * 100_000  # large but under the cap
    answer = requests.post(ops_url + PATHS["pipedrive"], json=event, headers=_auth(), timeout=30)
    assert answer.status_code == 200 and answer.json()["ok"]
