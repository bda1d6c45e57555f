"""The Pipedrive sandbox against Pipedrive's own OpenAPI specs, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

import openapi_check
from maillink.sandbox.pipedrive import TOKEN_COSTS, V2_QUERY_PARAMS, PipedriveSandbox
from maillink.sandbox.pipedrive.data import (
    ACTIVITY_BODY_FIELDS,
    NULLABLE_ACTIVITY_FIELDS,
    PARTICIPANT_FIELDS,
    Records,
)
from maillink.sandbox.pipedrive.views import PipedriveViews

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0 = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
TOKEN = {"x-api-token": "sandbox-token"}


def _seed(sandbox: PipedriveSandbox) -> dict[str, Any]:
    ann = sandbox.add_person("Ann Lee", ["Ann@Example.com", "ann.lee@home.example"])
    bob = sandbox.add_person("Bob Roe", ["bob@example.org"])
    won = sandbox.add_deal("Won", ann, add_time=T0, status="won", close_time=T0 + timedelta(days=9))
    lost = sandbox.add_deal("Lost", ann, add_time=T0, status="lost", close_time=T0 + timedelta(3))
    open_deal = sandbox.add_deal("Open", ann, add_time=T0 + timedelta(days=1))
    gone = sandbox.add_deal("Gone", ann, add_time=T0)
    sandbox.set_deal_status(gone, "deleted", at=NOW - timedelta(days=2))
    shelved = sandbox.add_deal("Shelved", ann, add_time=T0)
    sandbox.archive_deal(shelved, NOW - timedelta(days=5))
    lead = sandbox.add_lead("Lead", ann, add_time=T0)
    old_lead = sandbox.add_lead("Old lead", ann, add_time=T0, archived_at=T0 + timedelta(days=4))
    project = sandbox.add_project("Project", ann, add_time=T0, end_date=NOW.date())
    sandbox.add_project(
        "Done", bob, add_time=T0, status="completed", closed_at=T0 + timedelta(days=20)
    )
    return {
        "ann": ann,
        "bob": bob,
        "won": won,
        "lost": lost,
        "open": open_deal,
        "gone": gone,
        "shelved": shelved,
        "lead": lead,
        "old_lead": old_lead,
        "project": project,
    }


@pytest.fixture(scope="module")
def server() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox(clock=lambda: NOW) as running:
        yield running


@pytest.fixture
def sandbox(server: PipedriveSandbox) -> PipedriveSandbox:
    """The module's sandbox, emptied, without limits."""
    server.reset()
    server.burst_per_2s = server.daily_token_budget = None
    return server


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[PipedriveSandbox, dict[str, Any]]]:
    with PipedriveSandbox(clock=lambda: NOW) as running:
        ids = _seed(running)
        body = {
            "subject": "Hello",
            "type": "email",
            "done": True,
            "due_date": "2025-05-01",
            "due_time": "14:05",
            "participants": [{"person_id": ids["ann"], "primary": True}],
            "deal_id": ids["open"],
            "note": "<b>From:</b> ann<br>\nmaillink-id: &lt;m1@example.com&gt;",
        }
        created = requests.post(f"{running.url}/api/v2/activities", json=body, headers=TOKEN)
        ids["activity"] = created.json()["data"]["id"]
        yield running, ids


def _call(
    sandbox: PipedriveSandbox,
    method: str,
    path: str,
    params: dict[str, Any] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.request(
        method,
        sandbox.url + path,
        params=params,
        json=body,
        headers=TOKEN if headers is None else headers,
        timeout=10,
    )


# (method, path with {placeholders} filled from the seeded ids, query, body)
ENDPOINTS: list[tuple[str, str, dict[str, Any], Any]] = [
    ("GET", "/api/v2/persons/search", {"term": "ann@example.com", "fields": "email"}, None),
    (
        "GET",
        "/api/v2/persons/search",
        {"term": "ANN@EXAMPLE.COM", "fields": "email", "exact_match": "true", "limit": 1},
        None,
    ),
    ("GET", "/api/v2/persons", {"updated_since": "2025-01-01T00:00:00Z", "limit": 1}, None),
    ("GET", "/api/v2/persons/{ann}", {}, None),
    ("GET", "/api/v2/deals", {"person_id": "{ann}", "status": "open,won,lost,deleted"}, None),
    ("GET", "/api/v2/deals", {"updated_since": "2025-01-01T00:00:00Z", "limit": 2}, None),
    ("GET", "/api/v2/deals/archived", {"person_id": "{ann}"}, None),
    ("GET", "/api/v2/deals/{won}", {}, None),
    ("GET", "/api/v2/deals/{gone}", {}, None),
    ("GET", "/api/v1/leads", {"person_id": "{ann}", "limit": 1}, None),
    ("GET", "/api/v1/leads/archived", {"person_id": "{ann}"}, None),
    ("GET", "/api/v1/projects", {"status": "open,completed,canceled,deleted", "limit": 1}, None),
    ("GET", "/api/v1/activityTypes", {}, None),
    ("GET", "/api/v2/activities", {"person_id": "{ann}", "sort_by": "add_time"}, None),
    ("GET", "/api/v2/activities/{activity}", {}, None),
    (
        "POST",
        "/api/v2/activities",
        {},
        {"subject": "Re: Hello", "type": "email", "done": True, "person_id": "{ann}"},
    ),
    ("PATCH", "/api/v2/activities/{activity}", {}, {"lead_id": "{lead}", "deal_id": None}),
    ("POST", "/api/v2/persons", {}, {"name": "Bo", "emails": [{"value": "bo@example.com"}]}),
]


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return ids[value[1:-1]]
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    ENDPOINTS,
    ids=[f"{m} {p} {'+'.join(q)}" for m, p, q, _ in ENDPOINTS],
)
def test_every_endpoint_answers_in_the_shape_of_the_spec(
    seeded: tuple[PipedriveSandbox, dict[str, Any]],
    method: str,
    path: str,
    params: dict[str, Any],
    body: Any,
) -> None:
    sandbox, ids = seeded
    url_path = _fill(path, ids)
    response = _call(sandbox, method, url_path, _fill(params, ids), _fill(body, ids))
    assert response.status_code == 200, response.text
    assert openapi_check.response_errors(url_path, method, 200, response.json()) == []
    assert response.json()["success"] is True


def test_error_answers_have_pipedrives_error_shape(sandbox: PipedriveSandbox) -> None:
    answers = {
        401: _call(sandbox, "GET", "/api/v2/deals", headers={}),
        400: _call(sandbox, "POST", "/api/v2/activities", body={"subject": 7}),
        404: _call(sandbox, "GET", "/api/v2/activities/999"),
    }
    for status, response in answers.items():
        assert response.status_code == status
        url_path = response.request.path_url.split("?")[0]
        method = response.request.method or "GET"
        assert openapi_check.response_errors(url_path, method, status, response.json()) == []
        assert response.json()["success"] is False and response.json()["error"]


def test_the_check_catches_an_invented_field_and_a_wrong_type() -> None:
    deal = {"id": 1, "title": "Deal", "status": "open", "won_time": None}
    good = {"success": True, "data": [deal], "additional_data": {"next_cursor": None}}
    assert openapi_check.response_errors("/api/v2/deals", "GET", 200, good) == []

    invented = {**good, "data": [{**deal, "closed_for_good": True}]}
    wrong_type = {**good, "data": [{**deal, "id": "1"}]}
    nested = {**good, "additional_data": {"next_cursor": 5}}
    assert "closed_for_good" in " ".join(
        openapi_check.response_errors("/api/v2/deals", "GET", 200, invented)
    )
    assert openapi_check.response_errors("/api/v2/deals", "GET", 200, wrong_type)
    assert openapi_check.response_errors("/api/v2/deals", "GET", 200, nested)
    assert openapi_check.request_errors("/api/v2/activities", "POST", {"done": 1})
    assert openapi_check.request_errors("/api/v2/activities", "POST", {"notes": "x"})


OPERATIONS = {
    "persons.search": ("/api/v2/persons/search", "GET"),
    "persons.list": ("/api/v2/persons", "GET"),
    "persons.get": ("/api/v2/persons/1", "GET"),
    "deals.list": ("/api/v2/deals", "GET"),
    "deals.archived": ("/api/v2/deals/archived", "GET"),
    "deals.get": ("/api/v2/deals/1", "GET"),
    "leads.list": ("/api/v1/leads", "GET"),
    "leads.archived": ("/api/v1/leads/archived", "GET"),
    "projects.list": ("/api/v1/projects", "GET"),
    "activityTypes.list": ("/api/v1/activityTypes", "GET"),
    "activities.list": ("/api/v2/activities", "GET"),
    "activities.get": ("/api/v2/activities/1", "GET"),
    "activities.create": ("/api/v2/activities", "POST"),
    "activities.update": ("/api/v2/activities/1", "PATCH"),
    "persons.create": ("/api/v2/persons", "POST"),
    "users.list": ("/api/v1/users", "GET"),
}


def test_token_costs_and_query_parameters_are_the_specs() -> None:
    assert set(TOKEN_COSTS) == set(OPERATIONS)
    for operation, (path, method) in OPERATIONS.items():
        assert TOKEN_COSTS[operation] == openapi_check.token_cost(path, method), operation
        if operation in V2_QUERY_PARAMS:
            expected = openapi_check.query_parameters(path, method)
            assert V2_QUERY_PARAMS[operation] == expected, operation


@pytest.mark.parametrize(
    ("path", "method"), [("/api/v2/activities", "POST"), ("/api/v2/activities/1", "PATCH")]
)
def test_activity_body_validation_knows_the_specs_fields(path: str, method: str) -> None:
    version, template = openapi_check.template_of(path)
    operation = openapi_check.operation(version, template, method)
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    fields = {name: sub["type"] for name, sub in schema["properties"].items()}
    assert fields == ACTIVITY_BODY_FIELDS
    participant = schema["properties"]["participants"]["items"]["properties"]
    assert {name: sub["type"] for name, sub in participant.items()} == PARTICIPANT_FIELDS
    # The one liberty the sandbox takes: null unlinks an activity from its deal, lead or project.
    assert not any(schema["properties"][name].get("nullable") for name in NULLABLE_ACTIVITY_FIELDS)


@pytest.mark.parametrize(
    "body",
    [
        {"notes": "unknown field"},
        {"done": 1},
        {"deal_id": "12"},
        {"due_date": "01/05/2025"},
        {"participants": [{"person_id": 1, "primary_flag": True}]},
        ["not", "an", "object"],
    ],
)
def test_activity_body_pipedrive_would_refuse_gets_400(
    sandbox: PipedriveSandbox, body: Any
) -> None:
    sandbox.add_person("Ann", ["ann@example.com"])
    response = _call(sandbox, "POST", "/api/v2/activities", body=body)
    assert response.status_code == 400
    assert sandbox.activities() == []


def test_unknown_query_parameter_is_refused_by_v2_and_ignored_by_v1(
    sandbox: PipedriveSandbox,
) -> None:
    assert _call(sandbox, "GET", "/api/v2/activities", {"type": "email"}).status_code == 400
    assert _call(sandbox, "GET", "/api/v1/leads", {"archived_status": "all"}).status_code == 200


def test_exact_search_matches_whole_addresses_case_insensitively(
    sandbox: PipedriveSandbox,
) -> None:
    ann = sandbox.add_person("Ann", ["Ann@Example.com"])
    sandbox.add_person("Annette", ["ann@example.com.au"])
    params = {"term": "ANN@example.COM", "fields": "email", "exact_match": "true"}
    items = _call(sandbox, "GET", "/api/v2/persons/search", params).json()["data"]["items"]
    assert [entry["item"]["id"] for entry in items] == [ann]
    params["exact_match"] = "false"
    items = _call(sandbox, "GET", "/api/v2/persons/search", params).json()["data"]["items"]
    assert len(items) == 2


def test_deleted_deals_show_only_when_asked_and_archived_ones_only_in_the_archive(
    seeded: tuple[PipedriveSandbox, dict[str, Any]],
) -> None:
    sandbox, ids = seeded

    def listed(path: str, status: str | None) -> set[int]:
        params = {"person_id": ids["ann"], **({"status": status} if status else {})}
        return {d["id"] for d in _call(sandbox, "GET", path, params).json()["data"]}

    assert listed("/api/v2/deals", None) == {ids["won"], ids["lost"], ids["open"]}
    assert listed("/api/v2/deals", "open,won,lost,deleted") == {
        ids["won"],
        ids["lost"],
        ids["open"],
        ids["gone"],
    }
    assert listed("/api/v2/deals", "won") == {ids["won"]}
    assert listed("/api/v2/deals/archived", None) == {ids["shelved"]}
    gone = _call(sandbox, "GET", f"/api/v2/deals/{ids['gone']}").json()["data"]
    assert gone["is_deleted"] is True and gone["status"] == "deleted"


def test_a_deal_deleted_more_than_30_days_ago_is_no_longer_listed(
    sandbox: PipedriveSandbox,
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    deal = sandbox.add_deal("Old", ann, add_time=T0)
    sandbox.set_deal_status(deal, "deleted", at=NOW - timedelta(days=31))
    params = {"status": "open,won,lost,deleted"}
    assert _call(sandbox, "GET", "/api/v2/deals", params).json()["data"] == []


def test_an_activity_keeps_one_link_and_null_unlinks(
    sandbox: PipedriveSandbox,
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    deal = sandbox.add_deal("Deal", ann, add_time=T0)
    lead = sandbox.add_lead("Lead", ann, add_time=T0)
    created = _call(
        sandbox, "POST", "/api/v2/activities", body={"deal_id": deal, "lead_id": lead}
    ).json()["data"]
    assert (created["deal_id"], created["lead_id"]) == (deal, None)  # deal > lead > project

    path = f"/api/v2/activities/{created['id']}"
    kept = _call(sandbox, "PATCH", path, body={"lead_id": lead}).json()["data"]
    assert (kept["deal_id"], kept["lead_id"]) == (deal, None)
    moved = _call(sandbox, "PATCH", path, body={"lead_id": lead, "deal_id": None}).json()["data"]
    assert (moved["deal_id"], moved["lead_id"]) == (None, lead)


def test_primary_participant_becomes_the_person_activities_are_listed_by(
    sandbox: PipedriveSandbox,
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    bob = sandbox.add_person("Bob", ["bob@example.com"])
    participants = [{"person_id": bob, "primary": False}, {"person_id": ann, "primary": True}]
    _call(sandbox, "POST", "/api/v2/activities", body={"participants": participants})
    assert len(_call(sandbox, "GET", "/api/v2/activities", {"person_id": ann}).json()["data"]) == 1
    assert _call(sandbox, "GET", "/api/v2/activities", {"person_id": bob}).json()["data"] == []


def test_cursor_pages_walk_every_record_once(sandbox: PipedriveSandbox) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    for n in range(7):
        sandbox.add_deal(f"Deal {n}", ann, add_time=T0 + timedelta(hours=n))
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 3, "sort_by": "add_time", "sort_direction": "desc"}
    while True:
        answer = _call(sandbox, "GET", "/api/v2/deals", params).json()
        seen += [d["id"] for d in answer["data"]]
        if not answer["additional_data"]["next_cursor"]:
            break
        params["cursor"] = answer["additional_data"]["next_cursor"]
    assert seen == list(range(7, 0, -1))


def test_token_sent_as_query_parameter_or_oauth_bearer_is_accepted(
    sandbox: PipedriveSandbox,
) -> None:
    query = _call(
        sandbox, "GET", "/api/v1/activityTypes", {"api_token": "sandbox-token"}, headers={}
    )
    bearer = {"Authorization": "Bearer sandbox-oauth-token"}
    assert query.status_code == 200
    assert _call(sandbox, "GET", "/api/v1/activityTypes", headers=bearer).status_code == 200
    wrong = {"Authorization": "Bearer sandbox-token"}
    assert _call(sandbox, "GET", "/api/v1/activityTypes", headers=wrong).status_code == 401


def test_burst_limit_answers_429_with_pipedrives_rate_limit_headers(
    sandbox: PipedriveSandbox,
) -> None:
    sandbox.burst_per_2s = 2
    first = _call(sandbox, "GET", "/api/v1/activityTypes")
    assert first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    _call(sandbox, "GET", "/api/v1/activityTypes")
    refused = _call(sandbox, "GET", "/api/v1/activityTypes")
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["x-ratelimit-reset"]) <= 2
    assert "x-daily-ratelimit-token-remaining" not in refused.headers
    assert sandbox.meter.units["activityTypes.list"] == 40  # the refused call cost nothing


def test_spent_daily_budget_answers_429_a_client_can_tell_from_a_burst(
    sandbox: PipedriveSandbox,
) -> None:
    sandbox.daily_token_budget = 30
    first = _call(sandbox, "GET", "/api/v1/activityTypes")
    assert first.headers["x-daily-ratelimit-token-remaining"] == "10"
    assert _call(sandbox, "GET", "/api/v1/activityTypes").status_code == 200  # 10 left: allowed
    refused = _call(sandbox, "GET", "/api/v2/activities")
    sandbox.reset_daily_budget()
    again = _call(sandbox, "GET", "/api/v2/activities")
    assert refused.status_code == 429
    assert refused.headers["x-daily-ratelimit-token-remaining"] == "0"
    assert 0 < int(refused.headers["Retry-After"]) <= 86400  # until midnight UTC
    assert "daily" in refused.json()["error"].lower()
    assert again.status_code == 200


def test_lost_response_is_written_but_never_answered(sandbox: PipedriveSandbox) -> None:
    sandbox.add_person("Ann", ["ann@example.com"])
    sandbox.lose_next_response(r"^/api/v2/activities$")
    with pytest.raises(requests.ConnectionError):
        _call(sandbox, "POST", "/api/v2/activities", body={"note": "x<br>maillink-id: k1"})
    assert [a["note"] for a in sandbox.activities_with_key("k1")] == ["x<br>maillink-id: k1"]
    assert _call(sandbox, "POST", "/api/v2/activities", body={}).status_code == 200  # once only


def test_injected_fault_is_served_and_counted(sandbox: PipedriveSandbox) -> None:
    from maillink.sandbox._server import Fault

    sandbox.faults.add(Fault(path="/api/v2/deals", status=503, headers={"Retry-After": "1"}))
    assert _call(sandbox, "GET", "/api/v2/deals").status_code == 503
    assert _call(sandbox, "GET", "/api/v2/deals").status_code == 200
    assert sandbox.meter.requests["http"] == 2
    assert sandbox.meter.requests["deals.list"] == 1
    assert sandbox.meter.units["deals.list"] == 10


def test_views_answer_every_operation_the_sandbox_charges() -> None:
    views = PipedriveViews(records=Records(), activity_types=[], clock=lambda: NOW)
    assert {operation for _, operation, _, _ in views.routes()} == set(TOKEN_COSTS)
