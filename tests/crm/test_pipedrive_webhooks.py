"""`maillink crm webhooks install|status` against the Pipedrive sandbox: the webhooks the daemon
needs are created, kept, repaired; others' are untouched; and a deal won in Pipedrive reaches the
daemon's endpoint, which forgets the cached facts of its person."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

import openapi_check
from maillink.cli import main
from maillink.config import WebhookCredentials
from maillink.crm.pipedrive_http import TOKEN_COSTS, PipedriveHTTP
from maillink.crm.pipedrive_webhooks import (
    NEEDED_OBJECTS,
    BasicAuth,
    PipedriveWebhooks,
    subscription_url,
)
from maillink.model import Item, ItemKind, ItemRef, ItemStatus, Person
from maillink.ops.metrics import Metrics
from maillink.ops.server import OpsContext, OpsServer, create_ops_app
from maillink.ops.webhooks import ITEM_ENTITIES, PERSON_ENTITY
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.pipedrive.webhooks import SPEC_OBJECTS
from maillink.store import Store, cache

URL = "https://maillink.example.com/webhooks/pipedrive"
AUTH = BasicAuth("pipedrive-hook", "correct-horse-battery-staple")
PATH = "/api/v1/webhooks"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def sandbox() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox() as running:
        yield running


@pytest.fixture
def hooks(sandbox: PipedriveSandbox) -> PipedriveWebhooks:
    return PipedriveWebhooks(PipedriveHTTP(sandbox.url, api_token=sandbox.api_token))


def _add(sandbox: PipedriveSandbox, event_object: str, url: str, **fields: Any) -> int:
    """A webhook made by hand in Pipedrive (by an admin, or another integration)."""
    body = {
        "subscription_url": url,
        "event_action": "*",
        "event_object": event_object,
        "name": "by hand",
        "http_auth_user": AUTH.username,
        "http_auth_password": AUTH.password,
        "version": "2.0",
        **fields,
    }
    answer = requests.post(
        sandbox.url + PATH, json=body, headers={"x-api-token": sandbox.api_token}, timeout=10
    )
    assert answer.status_code == 201, answer.text
    created: int = answer.json()["data"]["id"]
    return created


def _listed(sandbox: PipedriveSandbox) -> list[dict[str, Any]]:
    """The company's webhooks as the sandbox keeps them (passwords included)."""
    return [
        {
            "id": h.id,
            "event_action": h.event_action,
            "event_object": h.event_object,
            "subscription_url": h.subscription_url,
            "version": h.version,
            "http_auth_user": h.http_auth_user,
            "http_auth_password": h.http_auth_password,
        }
        for h in sandbox.webhooks.hooks.values()
    ]


def test_the_objects_asked_for_are_the_ones_the_daemon_acts_on() -> None:
    assert set(NEEDED_OBJECTS) == ITEM_ENTITIES | {PERSON_ENTITY}


def test_the_webhooks_calls_are_costed_in_the_transports_table_as_the_spec_says() -> None:
    assert TOKEN_COSTS["webhooks.create"] == openapi_check.token_cost(PATH, "POST")
    assert TOKEN_COSTS["webhooks.list"] == openapi_check.token_cost(PATH, "GET")
    assert TOKEN_COSTS["webhooks.delete"] == openapi_check.token_cost(f"{PATH}/1", "DELETE")


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://maillink.example.com", URL),
        ("https://maillink.example.com/", URL),
        ("https://example.com/maillink", "https://example.com/maillink/webhooks/pipedrive"),
        (URL, URL),
    ],
)
def test_the_subscription_url_is_the_public_url_and_the_endpoint(base: str, expected: str) -> None:
    assert subscription_url(base) == expected


def test_install_creates_one_v2_webhook_per_object_with_the_basic_auth(
    sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    plan = hooks.install(URL, AUTH)

    assert sorted(plan.created) == ["deal", "lead", "person", "project"]
    assert plan.kept == {} and plan.removed == [] and plan.not_offered == []
    stored = _listed(sandbox)
    assert {(h["event_action"], h["event_object"]) for h in stored} == {
        ("*", o) for o in NEEDED_OBJECTS
    }
    assert {(h["subscription_url"], h["version"], h["http_auth_user"]) for h in stored} == {
        (URL, "2.0", AUTH.username)
    }
    assert {h["http_auth_password"] for h in stored} == {AUTH.password}
    sent = [r for r in sandbox.received if r.operation == "webhooks.create"]
    for request in sent:
        errors = openapi_check.request_errors(request.path, "POST", request.body)
        if request.body["event_object"] == "project":
            # Webhooks v2 offers projects (Pipedrive's guide); the Dec 2025 spec's enum lags.
            assert len(errors) == 1 and errors[0].startswith("event_object: 'project' is not one")
        else:
            assert errors == [], request.body
    listed = requests.get(
        sandbox.url + PATH, headers={"x-api-token": sandbox.api_token}, timeout=10
    ).json()
    assert openapi_check.response_errors(PATH, "GET", 200, listed) == []
    assert hooks.http.tokens_spent == 10 + 4 * 10  # one list, four creates: the spec's costs


def test_a_second_install_changes_nothing(
    sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    first = hooks.install(URL, AUTH)
    before = _listed(sandbox)
    sandbox.received.clear()

    second = hooks.install(URL, AUTH)

    assert not second.changed
    assert second.kept == first.created
    assert _listed(sandbox) == before
    assert [r.operation for r in sandbox.received] == ["webhooks.list"]


def test_broken_webhooks_of_maillink_are_replaced_and_others_are_left_alone(
    sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    zapier = _add(sandbox, "deal", "https://hooks.zapier.example/catch/1")
    someone = _add(sandbox, "*", "https://crm-sync.example/pipedrive", version="1.0")
    moved = _add(sandbox, "deal", "https://old-host.example/webhooks/pipedrive")
    v1 = _add(sandbox, "lead", URL, version="1.0")
    wrong_user = _add(sandbox, "person", URL, http_auth_user="someone-else")
    good = _add(sandbox, "project", URL)
    twin = _add(sandbox, "project", URL)
    narrow = _add(sandbox, "person", URL, event_action="change")

    plan = hooks.install(URL, AUTH)

    assert plan.kept == {"project": good}
    assert sorted(plan.created) == ["deal", "lead", "person"]
    assert sorted(plan.removed) == sorted([moved, v1, wrong_user, twin, narrow])
    remaining = {h["id"] for h in _listed(sandbox)}
    assert {zapier, someone, good} <= remaining
    assert remaining - {zapier, someone} == {good, *plan.created.values()}
    assert not hooks.install(URL, AUTH).changed


def test_a_webhook_whose_deliveries_were_refused_with_401_is_created_again(
    sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    plan = hooks.install(URL, AUTH)
    sandbox.webhooks.hooks[plan.created["deal"]].last_http_status = 401  # a changed password

    repaired = hooks.install(URL, AUTH)

    assert sorted(repaired.created) == ["deal"]
    assert repaired.removed == [plan.created["deal"]]
    assert not hooks.install(URL, AUTH).changed


def test_force_creates_every_webhook_again_with_the_current_password(
    sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    plan = hooks.install(URL, AUTH)
    new = BasicAuth(AUTH.username, "a-brand-new-password-here")
    spent = hooks.http.tokens_spent

    forced = hooks.install(URL, new, force=True)

    assert sorted(forced.removed) == sorted(plan.created.values())
    assert {h["http_auth_password"] for h in _listed(sandbox)} == {new.password}
    # One list, four creates, four deletes: counted by the transport, at the spec's costs.
    assert hooks.http.tokens_spent - spent == 10 + 4 * 10 + 4 * 6


def test_a_pipedrive_without_project_webhooks_gets_the_others(
    sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    sandbox.webhooks.objects = frozenset(SPEC_OBJECTS)  # as the published spec's enum

    plan = hooks.install(URL, AUTH)

    assert sorted(plan.created) == ["deal", "lead", "person"]
    assert plan.not_offered == ["project"]
    assert hooks.status(URL, AUTH.username)["missing"] == ["project"]


def test_status_shows_each_webhook_its_state_and_what_is_missing(
    sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    assert hooks.status(URL, AUTH.username) == {
        "url": URL,
        "webhooks": [],
        "missing": list(NEEDED_OBJECTS),
    }
    _add(sandbox, "deal", "https://hooks.zapier.example/catch/1")  # not maillink's: not shown
    ok = _add(sandbox, "deal", URL)
    failing = _add(sandbox, "person", URL)
    sandbox.webhooks.hooks[failing].last_http_status = 502
    broken = _add(sandbox, "lead", "https://old-host.example/webhooks/pipedrive")

    found = hooks.status(URL, AUTH.username)

    states = {row["id"]: (row["state"], row["is_active"]) for row in found["webhooks"]}
    assert states == {ok: ("ok", True), failing: ("failing", True), broken: ("broken", True)}
    [row] = [r for r in found["webhooks"] if r["id"] == failing]
    assert row["last_http_status"] == 502 and "HTTP 502" in row["problems"][0]
    assert found["missing"] == ["lead", "project"]


# -- the command line ---------------------------------------------------------------------------


def _workspace(
    tmp_path: Path,
    sandbox: PipedriveSandbox,
    *,
    public_url: str | None = "https://maillink.example.com",
    webhook: bool = True,
    token: str | None = None,
) -> Path:
    config = tmp_path / "maillink.toml"
    daemon = f'\n[daemon]\npublic_url = "{public_url}"\n' if public_url else ""
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "m.db"}"\n\n'
        f'[crm]\nkind = "pipedrive"\nbase_url = "{sandbox.url}"\n{daemon}'
    )
    credentials: dict[str, Any] = {"pipedrive": {"api_token": token or sandbox.api_token}}
    if webhook:
        credentials["webhook"] = {"username": AUTH.username, "password": AUTH.password}
    (tmp_path / "credentials.json").write_text(json.dumps(credentials))
    return config


def _run(config: Path, *args: str) -> int:
    try:
        main(["--config", str(config), *args])
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def test_the_commands_install_then_report_the_webhooks(
    tmp_path: Path, sandbox: PipedriveSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _workspace(tmp_path, sandbox)

    assert _run(config, "crm", "webhooks", "install") == 0
    out = capsys.readouterr().out
    assert f"post to {URL}" in out and out.count("created") == 4
    assert _run(config, "crm", "webhooks", "install") == 0
    assert "nothing to change" in capsys.readouterr().out

    assert _run(config, "crm", "webhooks", "status", "--json") == 0
    found = json.loads(capsys.readouterr().out)
    assert found["missing"] == [] and {r["state"] for r in found["webhooks"]} == {"ok"}
    assert _run(config, "crm", "webhooks", "status") == 0
    text = capsys.readouterr().out
    assert f"expected URL: {URL}" in text and text.count(" ok ") == 4


def test_url_option_overrides_the_configured_public_url(
    tmp_path: Path, sandbox: PipedriveSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _workspace(tmp_path, sandbox, public_url=None)
    code = _run(config, "crm", "webhooks", "install", "--url", "http://127.0.0.1:8780", "--json")
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["url"] == "http://127.0.0.1:8780/webhooks/pipedrive"  # loopback: http allowed


@pytest.mark.parametrize(
    ("setup", "args", "says"),
    [
        ({"webhook": False}, (), "webhook is missing"),
        ({"public_url": None}, (), "no public URL"),
        ({}, ("--url", "http://maillink.example.com"), "--url uses plain http://"),
        ({"token": "wrong-token"}, (), "Pipedrive refused pipedrive.api_token"),
    ],
)
def test_install_fails_with_one_line_that_says_what_to_fix(
    tmp_path: Path,
    sandbox: PipedriveSandbox,
    capsys: pytest.CaptureFixture[str],
    setup: dict[str, Any],
    args: tuple[str, ...],
    says: str,
) -> None:
    config = _workspace(tmp_path, sandbox, **setup)

    assert _run(config, "crm", "webhooks", "install", *args) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith("maillink: error: ") and says in err and "\n" not in err
    assert sandbox.webhooks.hooks == {}


def test_a_non_https_public_url_in_the_config_is_refused(
    tmp_path: Path, sandbox: PipedriveSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _workspace(tmp_path, sandbox, public_url="http://maillink.example.com")
    assert _run(config, "crm", "webhooks", "status") == 2
    err = capsys.readouterr().err.strip()
    assert "[daemon] public_url uses plain http://" in err and "\n" not in err


# -- end to end: Pipedrive's call reaches the daemon's endpoint ----------------------------------


def test_a_deal_won_in_pipedrive_makes_the_endpoint_forget_its_persons_facts(
    store: Store, sandbox: PipedriveSandbox, hooks: PipedriveWebhooks
) -> None:
    ann = sandbox.add_person("Ann", ["ann@customer.example"])
    deal = sandbox.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    bob = sandbox.add_person("Bob", ["bob@other.example"])
    fetched = datetime.now(UTC)
    item = Item(
        ItemRef(ItemKind.DEAL, str(deal)), "Licences", frozenset({ann}), NOW, ItemStatus.OPEN
    )
    with store.transaction() as conn:
        cache.put_persons(conn, {"ann@customer.example": [Person(ann, "Ann", ())]}, fetched)
        cache.put_items(conn, {ann: [item], bob: []}, fetched)
    metrics = Metrics()
    ctx = OpsContext(
        store=store, metrics=metrics, webhook=WebhookCredentials(AUTH.username, AUTH.password)
    )
    server = OpsServer(create_ops_app(ctx), "127.0.0.1", 0).start()
    try:
        hooks.install(subscription_url(server.url), AUTH)

        sandbox.set_deal_status(deal, "won", NOW)

        assert sandbox.webhooks.wait_delivered(10)
    finally:
        server.stop()
    [delivery] = sandbox.webhooks.delivered
    assert delivery.status == 200 and delivery.body["meta"]["entity"] == "deal"
    ttl = timedelta(hours=1)
    with store.engine.connect() as conn:
        assert cache.fresh_items(conn, [ann, bob], fetched, ttl) == {bob: []}  # ann forgotten
    assert metrics.crm_changes.labels("webhook")._value.get() == 1
    assert (
        hooks.status(subscription_url(server.url), AUTH.username)["webhooks"][0]["last_http_status"]
        == 200
    )
