"""The Pipedrive sandbox's /v1/webhooks, held against the v1 spec, and the v2 notifications it
sends to the webhooks' URLs when deals, leads, persons and projects change."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from flask import Flask, Response, request

import openapi_check
from maillink.sandbox._server import ServerThread
from maillink.sandbox.pipedrive import ADMIN_COSTS, PipedriveSandbox
from maillink.sandbox.pipedrive.webhooks import NO_ANSWER, WEBHOOK_COSTS

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PATH = "/api/v1/webhooks"


class Receiver:
    """An HTTP endpoint that records what it is sent and answers `status`."""

    def __init__(self) -> None:
        self.status = 200
        self.calls: list[tuple[str | None, dict[str, Any]]] = []
        self._lock = threading.Lock()
        app = Flask("receiver")

        @app.post("/hook")
        def hook() -> Response:
            with self._lock:
                self.calls.append((request.headers.get("Authorization"), request.get_json()))
            return Response(status=self.status)

        self.server = ServerThread(app)
        self.url = self.server.url + "/hook"


@pytest.fixture
def sandbox() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox(clock=lambda: NOW) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    with found.server:
        yield found


def _api(sandbox: PipedriveSandbox, method: str, path: str = PATH, **kwargs: Any) -> Any:
    headers = {"x-api-token": sandbox.api_token}
    return requests.request(method, sandbox.url + path, headers=headers, timeout=10, **kwargs)


def _hook(url: str, event_object: str = "*", **fields: Any) -> dict[str, Any]:
    body = {
        "subscription_url": url,
        "event_action": "*",
        "event_object": event_object,
        "name": f"test {event_object}",
        "http_auth_user": "hook-user",
        "http_auth_password": "hook-password-long",
        "version": "2.0",
    }
    return {**body, **fields}


def _events(receiver: Receiver, sandbox: PipedriveSandbox) -> list[dict[str, Any]]:
    assert sandbox.webhooks.wait_delivered(10)
    return [body for _auth, body in receiver.calls]


def test_webhooks_are_created_listed_and_deleted_as_the_spec_describes(
    sandbox: PipedriveSandbox,
) -> None:
    body = _hook("https://hooks.example/pipedrive", "deal")
    assert openapi_check.request_errors(PATH, "POST", body) == []
    created = _api(sandbox, "POST", json=body)
    assert created.status_code == 201
    assert openapi_check.response_errors(PATH, "POST", 201, created.json()) == []
    hook = created.json()["data"]
    assert hook["http_auth_user"] == "hook-user"
    assert hook["http_auth_password"] is None  # Pipedrive never gives the password back

    listed = _api(sandbox, "GET")
    assert openapi_check.response_errors(PATH, "GET", 200, listed.json()) == []
    assert [h["id"] for h in listed.json()["data"]] == [hook["id"]]
    assert listed.json()["data"][0]["is_active"] == 1

    path = f"{PATH}/{hook['id']}"
    deleted = _api(sandbox, "DELETE", path)
    assert deleted.status_code == 200
    assert openapi_check.response_errors(path, "DELETE", 200, deleted.json()) == []
    again = _api(sandbox, "DELETE", path)
    assert again.status_code == 404
    assert openapi_check.response_errors(path, "DELETE", 404, again.json()) == []
    assert _api(sandbox, "GET").json()["data"] == []
    for operation, method in (("webhooks.list", "GET"), ("webhooks.create", "POST")):
        assert WEBHOOK_COSTS[operation] == openapi_check.token_cost(PATH, method)
    assert WEBHOOK_COSTS["webhooks.delete"] == openapi_check.token_cost(path, "DELETE")
    assert set(WEBHOOK_COSTS.items()) <= set(ADMIN_COSTS.items())  # charged like the others
    assert sandbox.meter.units["webhooks.list"] == 2 * 10


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subscription_url": None}, "subscription_url"),
        ({"subscription_url": "not a url"}, "subscription_url"),
        ({"event_action": "added"}, "event_action"),  # a v1 action name
        ({"event_object": "invoice"}, "event_object"),
        ({"name": None}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"version": "3.0"}, "version"),
        ({"http_auth_user": 7}, "http_auth_user"),
    ],
)
def test_a_bad_webhook_is_refused_with_the_field_named(
    sandbox: PipedriveSandbox, change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**_hook("https://h.example/x"), **change}.items() if v is not None}
    refused = _api(sandbox, "POST", json=body)
    assert refused.status_code == 400
    assert list(refused.json()["errors"]) == [field]
    assert openapi_check.response_errors(PATH, "POST", 400, refused.json()) == []
    assert _api(sandbox, "GET").json()["data"] == []


def test_a_webhook_cannot_post_to_the_api_itself(sandbox: PipedriveSandbox) -> None:
    refused = _api(sandbox, "POST", json=_hook(sandbox.url + "/api/v1/persons"))
    assert refused.status_code == 400 and "subscription_url" in refused.json()["errors"]


def test_a_won_deal_is_posted_as_a_v2_change_with_basic_auth(
    sandbox: PipedriveSandbox, receiver: Receiver
) -> None:
    ann = sandbox.add_person("Ann", ["ann@customer.example"])  # before any webhook: not sent
    deal = sandbox.add_deal("Licences", ann, add_time=NOW - timedelta(days=3))
    assert _api(sandbox, "POST", json=_hook(receiver.url, "deal")).status_code == 201

    sandbox.set_deal_status(deal, "won", NOW)

    assert sandbox.webhooks.wait_delivered(10)
    [(auth, event)] = receiver.calls
    assert auth == "Basic " + base64.b64encode(b"hook-user:hook-password-long").decode()
    meta = event["meta"]
    assert (meta["action"], meta["entity"], meta["entity_id"], meta["version"]) == (
        "change",
        "deal",
        deal,
        "2.0",
    )
    assert event["data"]["status"] == "won" and event["data"]["person_id"] == ann
    assert event["previous"] == {  # the changed fields' former values
        "status": "open",
        "won_time": None,
        "close_time": None,
        "update_time": "2026-02-27T09:00:00Z",
    }
    [hook] = _api(sandbox, "GET").json()["data"]
    assert hook["last_http_status"] == 200
    assert hook["last_delivery_time"] == "2026-03-02T09:00:00Z"


def test_each_change_reaches_the_webhooks_whose_action_and_object_match(
    sandbox: PipedriveSandbox, receiver: Receiver
) -> None:
    for event_object, action in (("*", "*"), ("person", "change"), ("lead", "delete")):
        body = _hook(
            receiver.url, event_object, event_action=action, name=f"{action}.{event_object}"
        )
        assert _api(sandbox, "POST", json=body).status_code == 201
    v1 = _hook(receiver.url, "person", version="1.0")  # v1 bodies are not modelled: never sent
    assert _api(sandbox, "POST", json=v1).status_code == 201

    ann = sandbox.add_person("Ann", ["ann@customer.example"])
    sandbox.update_person(ann, emails=["ann@new.example"], at=NOW)
    lead = sandbox.add_lead("Trial", ann, add_time=NOW)
    sandbox.delete_lead(lead)
    project = sandbox.add_project("Rollout", ann, add_time=NOW)
    sandbox.set_project_status(project, "completed", NOW)

    seen = sorted(
        (e["meta"]["webhook_id"], e["meta"]["action"], e["meta"]["entity"])
        for e in _events(receiver, sandbox)
    )
    assert seen == [
        (1, "change", "person"),
        (1, "change", "project"),
        (1, "create", "lead"),
        (1, "create", "person"),
        (1, "create", "project"),
        (1, "delete", "lead"),
        (2, "change", "person"),
        (3, "delete", "lead"),
    ]
    by_action = {(e["meta"]["action"], e["meta"]["entity"]): e for e in _events(receiver, sandbox)}
    changed = by_action[("change", "person")]
    assert changed["previous"]["emails"][0]["value"] == "ann@customer.example"
    assert changed["data"]["emails"][0]["value"] == "ann@new.example"
    deleted = by_action[("delete", "lead")]
    assert deleted["data"] is None and deleted["previous"]["person_id"] == ann
    assert by_action[("create", "person")]["previous"] is None


def test_a_merge_is_a_delete_with_merged_to_id_then_a_change(
    sandbox: PipedriveSandbox, receiver: Receiver
) -> None:
    gone = sandbox.add_person("Ann", ["ann@old.example"])
    kept = sandbox.add_person("Ann B.", ["ann@customer.example"])
    assert _api(sandbox, "POST", json=_hook(receiver.url, "person")).status_code == 201

    merged = _api(sandbox, "PUT", f"/api/v1/persons/{gone}/merge", json={"merge_with_id": kept})
    assert merged.status_code == 200

    deleted, changed = _events(receiver, sandbox)
    assert (deleted["meta"]["action"], deleted["meta"]["entity_id"]) == ("delete", gone)
    assert deleted["meta"]["merged_to_id"] == str(kept)
    assert (changed["meta"]["action"], changed["meta"]["entity_id"]) == ("change", kept)
    assert [e["value"] for e in changed["data"]["emails"]] == [
        "ann@customer.example",
        "ann@old.example",
    ]


def test_a_person_created_through_the_api_is_posted_as_an_api_change(
    sandbox: PipedriveSandbox, receiver: Receiver
) -> None:
    assert _api(sandbox, "POST", json=_hook(receiver.url, "person")).status_code == 201
    made = _api(sandbox, "POST", "/api/v2/persons", json={"name": "Zoe"})
    assert made.status_code == 200
    [event] = _events(receiver, sandbox)
    assert event["meta"]["change_source"] == "api"
    assert event["data"]["id"] == made.json()["data"]["id"]


@pytest.mark.parametrize("failure", ["status", "unreachable"])
def test_a_failing_receiver_is_recorded_and_never_breaks_the_api(
    sandbox: PipedriveSandbox, receiver: Receiver, failure: str
) -> None:
    url = receiver.url if failure == "status" else "http://127.0.0.1:9/hook"
    receiver.status = 500
    assert _api(sandbox, "POST", json=_hook(url, "person")).status_code == 201

    made = _api(sandbox, "POST", "/api/v2/persons", json={"name": "Zoe"})

    assert made.status_code == 200
    assert sandbox.webhooks.wait_delivered(10)
    [hook] = _api(sandbox, "GET").json()["data"]
    assert hook["last_http_status"] == (500 if failure == "status" else NO_ANSWER)


def test_reset_forgets_the_webhooks(sandbox: PipedriveSandbox, receiver: Receiver) -> None:
    assert _api(sandbox, "POST", json=_hook(receiver.url)).status_code == 201
    sandbox.reset()
    sandbox.add_person("Ann", ["ann@customer.example"])
    assert _api(sandbox, "GET").json()["data"] == []
    assert _events(receiver, sandbox) == []
