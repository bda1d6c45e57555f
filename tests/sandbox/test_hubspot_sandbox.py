"""The HubSpot sandbox against HubSpot's own OpenAPI specs, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import hubspot_openapi_check as spec_check
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.sandbox.hubspot.records import iso

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0 = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
TOKEN = "sandbox-hubspot-private-app-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _seed(sandbox: HubSpotSandbox) -> dict[str, Any]:
    owner = sandbox.add_owner("alice@acme.example", "Alice", "Rep")
    acme = sandbox.add_company("Example Inc", "example.com")
    ann = sandbox.add_contact(
        "Ann@Example.com", "Ann", "Lee", additional_emails=["ann.lee@home.example"], company_id=acme
    )
    bob = sandbox.add_contact("bob@example.org", "Bob", "Roe")
    won = sandbox.add_deal("Won", ann, add_time=T0, status="won", close_time=T0 + timedelta(9))
    open_deal = sandbox.add_deal(
        "Open", ann, add_time=T0 + timedelta(1), company_id=acme, expected_close=NOW + timedelta(30)
    )
    gone = sandbox.add_deal("Gone", ann, add_time=T0)
    sandbox.set_deal_status(gone, "deleted", at=NOW - timedelta(days=2))
    lead = sandbox.add_lead("Lead", ann, add_time=T0)
    email = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/emails",
        body={
            "properties": _email_properties("<m0@example.com>"),
            "associations": [_to(ann, 198)],
        },
    ).json()["id"]
    return {
        "owner": owner,
        "acme": acme,
        "ann": ann,
        "bob": bob,
        "won": won,
        "open": open_deal,
        "gone": gone,
        "lead": lead,
        "email": email,
    }


def _email_properties(key: str, subject: str = "Hello") -> dict[str, str]:
    headers = {"from": {"email": "ann@example.com"}, "to": [{"email": "alice@acme.example"}]}
    return {
        "hs_timestamp": "2025-05-01T14:05:00Z",
        "hs_email_direction": "INCOMING_EMAIL",
        "hs_email_subject": subject,
        "hs_email_headers": json.dumps(headers),
        "maillink_key": key,
    }


def _to(object_id: int | str, type_id: int) -> dict[str, Any]:
    return {
        "to": {"id": str(object_id)},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
    }


def _call(
    sandbox: HubSpotSandbox,
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
        headers=AUTH if headers is None else headers,
        timeout=10,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(clock=lambda: NOW) as running:
        yield running


@pytest.fixture
def sandbox(server: HubSpotSandbox) -> HubSpotSandbox:
    """The module's sandbox, emptied, without limits."""
    server.reset()
    server.limits.burst_per_10s = server.limits.daily = server.limits.search_per_second = None
    return server


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[HubSpotSandbox, dict[str, Any]]]:
    with HubSpotSandbox(clock=lambda: NOW) as running:
        yield running, _seed(running)


def _search(prop: str, operator: str, value: str, *names: str) -> dict[str, Any]:
    return {
        "filterGroups": [
            {"filters": [{"propertyName": prop, "operator": operator, "value": value}]}
        ],
        "properties": list(names),
        "limit": 100,
    }


def _ids(key: str) -> dict[str, Any]:
    return {"inputs": [{"id": "{" + key + "}"}]}


# (method, path with {placeholders} filled from the seeded ids, query, body, status)
ENDPOINTS: list[tuple[str, str, dict[str, Any], Any, int]] = [
    (
        "POST",
        "/crm/v3/objects/contacts/batch/read",
        {},
        {
            "idProperty": "email",
            "inputs": [{"id": "ANN@example.com"}, {"id": "bob@example.org"}],
            "properties": ["email", "firstname", "hs_additional_emails"],
        },
        200,
    ),
    (
        "POST",
        "/crm/v3/objects/contacts/batch/read",
        {},
        {"idProperty": "email", "inputs": [{"id": "nobody@example.net"}], "properties": ["email"]},
        207,
    ),
    ("POST", "/crm/v3/objects/contacts/search", {}, _search("email", "EQ", "ann@example.com"), 200),
    (
        "POST",
        "/crm/v3/objects/contacts/search",
        {},
        _search("hs_additional_emails", "CONTAINS_TOKEN", "ann.lee@home.example", "email"),
        200,
    ),
    (
        "POST",
        "/crm/v3/objects/deals/search",
        {},
        _search("hs_lastmodifieddate", "GTE", "2025-01-01T00:00:00Z", "dealstage", "hs_is_closed"),
        200,
    ),
    (
        "POST",
        "/crm/v3/objects/emails/search",
        {},
        _search("maillink_key", "EQ", "<m0@example.com>"),
        200,
    ),
    ("POST", "/crm/v4/associations/contacts/deals/batch/read", {}, _ids("ann"), 200),
    ("POST", "/crm/v4/associations/contacts/leads/batch/read", {}, _ids("ann"), 200),
    ("POST", "/crm/v4/associations/contacts/companies/batch/read", {}, _ids("ann"), 200),
    ("POST", "/crm/v4/associations/contacts/deals/batch/read", {}, _ids("bob"), 207),
    (
        "POST",
        "/crm/v4/associations/emails/deals/batch/create",
        {},
        {
            "inputs": [
                {
                    "from": {"id": "{email}"},
                    "to": {"id": "{open}"},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 210}],
                }
            ]
        },
        201,
    ),
    (
        "POST",
        "/crm/v4/associations/emails/companies/batch/associate/default",
        {},
        {"inputs": [{"from": {"id": "{email}"}, "to": {"id": "{acme}"}}]},
        200,
    ),
    (
        "POST",
        "/crm/v3/objects/emails/batch/create",
        {},
        {
            "inputs": [
                {
                    "properties": _email_properties("<m1@example.com>"),
                    "associations": [_to("{ann}", 198), _to("{open}", 210), _to("{acme}", 186)],
                },
                {"properties": _email_properties("<m2@example.com>"), "associations": []},
            ]
        },
        201,
    ),
    (
        "POST",
        "/crm/v3/objects/emails/batch/update",
        {},
        {"inputs": [{"id": "{email}", "properties": {"hs_email_subject": "Re: Hello"}}]},
        200,
    ),
    (
        "PATCH",
        "/crm/v3/objects/emails/{email}",
        {},
        {"properties": {"hs_email_subject": "Hi"}},
        200,
    ),
    (
        "GET",
        "/crm/v3/objects/deals/{open}",
        {"properties": "dealname,closedate,hs_is_closed"},
        None,
        200,
    ),
    ("GET", "/crm/v3/objects/0-3/{won}", {}, None, 200),
    ("GET", "/crm/v3/objects/contacts/{ann}", {"associations": "companies,deals"}, None, 200),
    ("GET", "/crm/v3/objects/contacts", {"limit": 1}, None, 200),
    ("GET", "/crm/v3/objects/leads/{lead}", {"properties": "hs_pipeline_stage"}, None, 200),
    ("GET", "/crm/v3/owners", {}, None, 200),
    ("GET", "/crm/v3/owners", {"email": "alice@acme.example"}, None, 200),
    ("GET", "/crm/v3/owners/{owner}", {}, None, 200),
    (
        "POST",
        "/crm/v3/objects/contacts",
        {},
        {"properties": {"email": "new@example.net", "firstname": "New"}},
        201,
    ),
]


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status"),
    ENDPOINTS,
    ids=[f"{m} {p} {s}" for m, p, _, _, s in ENDPOINTS],
)
def test_every_endpoint_answers_in_the_shape_of_the_spec(
    seeded: tuple[HubSpotSandbox, dict[str, Any]],
    method: str,
    path: str,
    params: dict[str, Any],
    body: Any,
    status: int,
) -> None:
    sandbox, ids = seeded
    url_path = _fill(path, ids)
    filled = _fill(body, ids)
    if filled is not None:
        assert spec_check.request_errors(url_path, method, filled) == []
    response = _call(sandbox, method, url_path, _fill(params, ids), filled)
    assert response.status_code == status, response.text
    assert spec_check.response_errors(url_path, method, status, response.json()) == []


def test_the_check_catches_an_invented_field_a_wrong_type_and_a_bad_request() -> None:
    contact = {"id": "1", "properties": {"email": None}, "createdAt": "t", "updatedAt": "t"}
    good = {"results": [{**contact, "archived": False}], "status": "COMPLETE"}
    good.update(startedAt="t", completedAt="t")
    path = "/crm/v3/objects/contacts/batch/read"
    assert spec_check.response_errors(path, "POST", 200, good) == []
    invented = {**good, "results": [{**contact, "archived": False, "deleted": True}]}
    wrong_type = {**good, "results": [{**contact, "archived": "no"}]}
    assert "deleted" in " ".join(spec_check.response_errors(path, "POST", 200, invented))
    assert spec_check.response_errors(path, "POST", 200, wrong_type)
    create = "/crm/v3/objects/emails/batch/create"
    assert spec_check.request_errors(create, "POST", {"inputs": [{"properties": {"n": 1}}]})
    assert spec_check.request_errors(create, "POST", {"inputs": [{"props": {}}]})
    assert spec_check.request_errors("/crm/v3/objects/deals/search", "POST", {"limit": "10"})


def _error_checked(response: requests.Response, status: int, category: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    url_path, method = response.request.path_url.split("?")[0], response.request.method or "GET"
    assert spec_check.response_errors(url_path, method, status, response.json()) == []
    body: dict[str, Any] = response.json()
    assert body["category"] == category and body["message"]
    return body


def test_refusals_have_hubspots_error_shape(sandbox: HubSpotSandbox) -> None:
    ann = sandbox.add_contact("ann@example.com")
    contacts = "/crm/v3/objects/contacts"
    _error_checked(_call(sandbox, "GET", contacts, headers={}), 401, "INVALID_AUTHENTICATION")
    wrong = {"Authorization": "Bearer not-a-token"}
    _error_checked(_call(sandbox, "GET", contacts, headers=wrong), 401, "INVALID_AUTHENTICATION")
    unknown = _call(sandbox, "POST", contacts, body={"properties": {"shoe_size": "9"}})
    assert "PROPERTY_DOESNT_EXIST" in _error_checked(unknown, 400, "VALIDATION_ERROR")["message"]
    read_only = _call(
        sandbox, "PATCH", f"{contacts}/{ann}", body={"properties": {"hs_object_id": "1"}}
    )
    assert "READ_ONLY_VALUE" in _error_checked(read_only, 400, "VALIDATION_ERROR")["message"]
    twice = _call(sandbox, "POST", contacts, body={"properties": {"email": "ANN@example.com"}})
    assert f"Existing ID: {ann}" in _error_checked(twice, 409, "CONFLICT")["message"]
    _error_checked(_call(sandbox, "GET", f"{contacts}/999"), 404, "OBJECT_NOT_FOUND")
    no_time = {"properties": {"hs_email_direction": "EMAIL"}}
    _error_checked(
        _call(sandbox, "POST", "/crm/v3/objects/emails", body=no_time), 400, "VALIDATION_ERROR"
    )
    bad_stage = {"properties": {"dealname": "D", "dealstage": "won-ish"}}
    _error_checked(
        _call(sandbox, "POST", "/crm/v3/objects/deals", body=bad_stage), 400, "VALIDATION_ERROR"
    )
    lonely_lead = {"properties": {"hs_lead_name": "L"}}
    _error_checked(
        _call(sandbox, "POST", "/crm/v3/objects/leads", body=lonely_lead), 400, "VALIDATION_ERROR"
    )
    assert [c["id"] for c in sandbox.objects("contacts")] == [ann]
    assert sandbox.emails() == [] and sandbox.objects("deals") == []


def _email_input(n: int, ann: int) -> dict[str, Any]:
    return {"properties": _email_properties(f"<k{n}@x>"), "associations": [_to(ann, 198)]}


# path -> (one input, numbered, for the contact `ann`; the rest of the body)
BATCHES: dict[str, tuple[Any, dict[str, Any]]] = {
    "/crm/v3/objects/emails/batch/create": (_email_input, {}),
    "/crm/v3/objects/contacts/batch/read": (
        lambda n, ann: {"id": f"c{n}@example.com"},
        {"idProperty": "email", "properties": ["email"]},
    ),
    "/crm/v3/objects/emails/batch/update": (
        lambda n, ann: {"id": "1", "properties": {"hs_email_subject": f"s{n}"}},
        {},
    ),
    "/crm/v4/associations/emails/contacts/batch/create": (
        lambda n, ann: {"from": {"id": str(n)}, "to": {"id": str(ann)}, **_to(ann, 198)},
        {},
    ),
    "/crm/v4/associations/contacts/deals/batch/read": (lambda n, ann: {"id": str(n)}, {}),
}


@pytest.mark.parametrize("path", list(BATCHES))
def test_a_batch_of_101_inputs_is_refused_whole(sandbox: HubSpotSandbox, path: str) -> None:
    ann = sandbox.add_contact("ann@example.com")
    one, rest = BATCHES[path]
    inputs = [one(n, ann) for n in range(101)]
    for item in inputs[:2]:  # the body itself is one the spec allows
        assert spec_check.request_errors(path, "POST", {"inputs": [item], **rest}) == []
    refused = _call(sandbox, "POST", path, body={"inputs": inputs, **rest})
    assert "101" in _error_checked(refused, 400, "VALIDATION_ERROR")["message"]
    assert sandbox.emails() == []
    accepted = _call(sandbox, "POST", path, body={"inputs": inputs[:100], **rest})
    assert accepted.status_code != 400, accepted.text


def test_archived_objects_are_left_out_of_every_read_unless_asked(
    sandbox: HubSpotSandbox,
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    kept = sandbox.add_deal("Kept", ann, add_time=T0)
    gone = sandbox.add_deal("Gone", ann, add_time=T0)
    sandbox.set_deal_status(gone, "deleted", at=NOW)
    linked = _call(
        sandbox,
        "POST",
        "/crm/v4/associations/contacts/deals/batch/read",
        body=_fill(_ids("ann"), {"ann": ann}),
    )
    assert [t["toObjectId"] for t in linked.json()["results"][0]["to"]] == [str(kept)]
    read = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/deals/batch/read",
        body={"inputs": [{"id": str(gone)}], "properties": []},
    )
    assert read.status_code == 207 and read.json()["results"] == []
    found = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/deals/search",
        body=_search("dealname", "HAS_PROPERTY", ""),
    )
    assert [d["id"] for d in found.json()["results"]] == [str(kept)]
    assert _call(sandbox, "GET", f"/crm/v3/objects/deals/{gone}").status_code == 404
    archived = _call(sandbox, "GET", f"/crm/v3/objects/deals/{gone}", {"archived": "true"}).json()
    assert archived["archived"] is True and archived["archivedAt"]
    listed = _call(sandbox, "GET", "/crm/v3/objects/deals", {"archived": "true"}).json()["results"]
    assert [d["id"] for d in listed] == [str(gone)]


def test_secondary_emails_are_found_by_search_not_by_batch_read(sandbox: HubSpotSandbox) -> None:
    ann = sandbox.add_contact("ann@example.com", additional_emails=["Ann.Lee@Home.example"])
    by_email = {"idProperty": "email", "inputs": [{"id": "ann.lee@home.example"}], "properties": []}
    read = _call(sandbox, "POST", "/crm/v3/objects/contacts/batch/read", body=by_email)
    assert read.status_code == 207
    assert read.json()["errors"][0]["context"]["ids"] == ["ann.lee@home.example"]
    for operator in ("EQ", "CONTAINS_TOKEN"):
        query = _search("hs_additional_emails", operator, "ANN.LEE@home.example")
        found = _call(sandbox, "POST", "/crm/v3/objects/contacts/search", body=query).json()
        assert [c["id"] for c in found["results"]] == [str(ann)] and found["total"] == 1
    primary = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/contacts/search",
        body=_search("email", "EQ", "ann.lee@home.example"),
    )
    assert primary.json()["total"] == 0


def test_a_merged_contact_reads_as_the_one_kept_and_takes_no_new_associations(
    sandbox: HubSpotSandbox,
) -> None:
    acme = sandbox.add_company("Acme")
    ann = sandbox.add_contact("ann@example.com", "Ann", company_id=acme)
    kept = sandbox.add_contact("ann.lee@example.com", "Ann", "Lee")
    deal = sandbox.add_deal("Deal", ann, add_time=T0)
    merge = {"primaryObjectId": str(kept), "objectIdToMerge": str(ann)}
    path = "/crm/v3/objects/contacts/merge"
    assert spec_check.request_errors(path, "POST", merge) == []
    sandbox.webhooks.subscribe("http://127.0.0.1:9/hook", "contact.merge")

    merged = _call(sandbox, "POST", path, body=merge)

    assert merged.status_code == 200, merged.text
    assert spec_check.response_errors(path, "POST", 200, merged.json()) == []
    assert merged.json()["id"] == str(kept)
    names = {"properties": "email,hs_additional_emails,hs_merged_object_ids"}
    read = _call(sandbox, "GET", f"/crm/v3/objects/contacts/{ann}", names).json()
    assert read["id"] == str(kept)  # the merged-away id answers as the contact kept
    assert read["properties"] == {
        "email": "ann.lee@example.com",
        "hs_additional_emails": "ann@example.com",  # its address, now a secondary one
        "hs_merged_object_ids": str(ann),
        "createdate": read["properties"]["createdate"],
        "lastmodifieddate": read["properties"]["lastmodifieddate"],
        "hs_object_id": str(kept),
    }
    by_id = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/contacts/batch/read",
        body={"inputs": [{"id": str(ann)}], "properties": []},
    )
    assert [c["id"] for c in by_id.json()["results"]] == [str(kept)]
    by_email = {"idProperty": "email", "inputs": [{"id": "ann@example.com"}], "properties": []}
    assert (
        _call(sandbox, "POST", "/crm/v3/objects/contacts/batch/read", body=by_email).json()[
            "results"
        ]
        == []
    )  # a secondary address is found by search only
    assert sandbox.associated_ids("contacts", kept, "deals") == [deal]
    assert sandbox.associated_ids("contacts", kept, "companies") == [acme]
    assert [c["id"] for c in sandbox.objects("contacts")] == [kept]
    email = {"properties": _email_properties("<m1@example.com>"), "associations": [_to(ann, 198)]}
    refused = _call(sandbox, "POST", "/crm/v3/objects/emails", body=email)
    message = _error_checked(refused, 400, "VALIDATION_ERROR")["message"]
    assert f"contacts {ann} does not exist" in message
    again = _call(sandbox, "POST", path, body=merge)
    _error_checked(again, 404, "OBJECT_NOT_FOUND")
    [event] = sandbox.webhooks.pending
    assert (event["subscriptionType"], event["objectId"]) == ("contact.merge", kept)
    assert event["primaryObjectId"] == kept and event["mergedObjectIds"] == [ann]


def test_a_users_action_runs_just_before_the_next_matching_request(
    sandbox: HubSpotSandbox,
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    deal = sandbox.add_deal("Deal", ann, add_time=T0)
    sandbox.before_next(
        r"^/crm/v3/objects/emails$", lambda: sandbox.set_deal_status(deal, "deleted", at=NOW)
    )
    assert _call(sandbox, "GET", f"/crm/v3/objects/deals/{deal}").status_code == 200
    email = {"properties": _email_properties("<m2@example.com>"), "associations": [_to(deal, 210)]}
    refused = _call(sandbox, "POST", "/crm/v3/objects/emails", body=email)
    assert f"deals {deal} does not exist" in refused.json()["message"]
    created = _call(sandbox, "POST", "/crm/v3/objects/emails", body={**email, "associations": []})
    assert created.status_code == 201  # once only


def test_deals_carry_what_hubspot_calculates_from_their_stage(sandbox: HubSpotSandbox) -> None:
    ann = sandbox.add_contact("ann@example.com")
    deal = sandbox.add_deal("Deal", ann, add_time=T0, expected_close=NOW + timedelta(days=30))
    names = {"properties": "closedate,hs_is_closed,hs_is_closed_won,dealstage,createdate"}
    opened = _call(sandbox, "GET", f"/crm/v3/objects/deals/{deal}", names).json()["properties"]
    assert opened["hs_is_closed"] == "false" and opened["closedate"].startswith("2025-07-02")
    assert opened["createdate"] == "2025-01-06T10:00:00.000Z"
    sandbox.close_deal(deal, won=False, at=T0 + timedelta(days=3))
    closed = _call(sandbox, "GET", f"/crm/v3/objects/deals/{deal}", names).json()["properties"]
    assert (closed["dealstage"], closed["hs_is_closed"], closed["hs_is_closed_won"]) == (
        "closedlost",
        "true",
        "false",
    )
    assert closed["closedate"] == "2025-01-09T10:00:00.000Z"
    moved = _call(
        sandbox,
        "PATCH",
        f"/crm/v3/objects/deals/{deal}",
        body={"properties": {"dealstage": "closedwon"}},
    )
    assert moved.json()["properties"]["dealstage"] == "closedwon"
    pipelines = _call(sandbox, "GET", "/crm/v3/pipelines/deals").json()["results"]
    stages = {s["id"]: s["metadata"] for s in pipelines[0]["stages"]}
    assert stages["closedwon"] == {"isClosed": "true", "probability": "1.0"}
    assert stages["appointmentscheduled"]["isClosed"] == "false"


def test_batch_results_do_not_come_in_input_order(sandbox: HubSpotSandbox) -> None:
    inputs = [{"properties": _email_properties(f"<k{n}@x>")} for n in range(3)]
    created = _call(sandbox, "POST", "/crm/v3/objects/emails/batch/create", body={"inputs": inputs})
    keys = [r["properties"]["maillink_key"] for r in created.json()["results"]]
    assert sorted(keys) == ["<k0@x>", "<k1@x>", "<k2@x>"] and keys != sorted(keys)


def test_email_engagements_keep_their_headers_and_associations(sandbox: HubSpotSandbox) -> None:
    owner = sandbox.add_owner("alice@acme.example")
    acme = sandbox.add_company("Acme")
    ann = sandbox.add_contact("ann@example.com", company_id=acme)
    deal = sandbox.add_deal("Deal", ann, add_time=T0)
    lead = sandbox.add_lead("Lead", ann, add_time=T0)
    properties = {**_email_properties("<m1@x>"), "hubspot_owner_id": str(owner)}
    links = [_to(ann, 198), _to(deal, 210), _to(acme, 186), _to(lead, 599)]
    body = {"inputs": [{"properties": properties, "associations": links}]}
    assert (
        _call(sandbox, "POST", "/crm/v3/objects/emails/batch/create", body=body).status_code == 201
    )
    [email] = sandbox.emails()
    assert email["properties"]["hubspot_owner_id"] == str(owner)
    assert json.loads(email["properties"]["hs_email_headers"])["from"]["email"] == "ann@example.com"
    assert email["associations"] == {
        "contacts": [ann],
        "companies": [acme],
        "deals": [deal],
        "leads": [lead],
    }
    assert sandbox.associated_ids("deals", deal, "emails") == [email["id"]]
    # A later decision moves the email: new association first, then the old one removed.
    other = sandbox.add_deal("Other", ann, add_time=T0)
    move = {
        "inputs": [
            {
                "from": {"id": str(email["id"])},
                "to": {"id": str(other)},
                "types": _to(other, 210)["types"],
            }
        ]
    }
    assert (
        _call(
            sandbox, "POST", "/crm/v4/associations/emails/deals/batch/create", body=move
        ).status_code
        == 201
    )
    drop = {"inputs": [{"from": {"id": str(email["id"])}, "to": [{"id": str(deal)}]}]}
    assert (
        _call(
            sandbox, "POST", "/crm/v4/associations/emails/deals/batch/archive", body=drop
        ).status_code
        == 204
    )
    assert sandbox.associated_ids("emails", email["id"], "deals") == [other]
    wrong_type = {
        "inputs": [{"properties": _email_properties("<m2@x>"), "associations": [_to(deal, 198)]}]
    }
    assert (
        _call(sandbox, "POST", "/crm/v3/objects/emails/batch/create", body=wrong_type).status_code
        == 400
    )


def test_burst_limit_answers_the_hubspot_headers_and_a_429_in_its_shape(
    sandbox: HubSpotSandbox,
) -> None:
    sandbox.limits.burst_per_10s = 2
    first = _call(sandbox, "GET", "/crm/v3/owners")
    assert first.headers["X-HubSpot-RateLimit-Max"] == "2"
    assert first.headers["X-HubSpot-RateLimit-Remaining"] == "1"
    assert first.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert "X-HubSpot-RateLimit-Daily" not in first.headers  # no daily limit set
    _call(sandbox, "GET", "/crm/v3/owners")
    refused = _call(sandbox, "GET", "/crm/v3/owners")
    assert refused.status_code == 429
    assert refused.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert spec_check.response_errors("/crm/v3/owners", "GET", 429, refused.json()) == []
    assert refused.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert sandbox.meter.requests["owners.list"] == 2  # the refused call is not counted


def test_daily_limit_is_a_private_apps_and_says_so(sandbox: HubSpotSandbox) -> None:
    sandbox.limits.daily = 2
    first = _call(sandbox, "GET", "/crm/v3/owners")
    assert first.headers["X-HubSpot-RateLimit-Daily"] == "2"
    assert first.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "1"
    _call(sandbox, "GET", "/crm/v3/owners")
    refused = _call(sandbox, "GET", "/crm/v3/owners")
    assert refused.status_code == 429 and refused.json()["policyName"] == "DAILY"
    assert refused.json()["errorType"] == "RATE_LIMIT"
    oauth = {"Authorization": f"Bearer {_oauth_tokens(sandbox)['access_token']}"}
    public = _call(sandbox, "GET", "/crm/v3/owners", headers=oauth)
    assert public.status_code == 200 and "X-HubSpot-RateLimit-Daily" not in public.headers
    sandbox.limits.reset_daily()
    assert _call(sandbox, "GET", "/crm/v3/owners").status_code == 200


def test_search_has_its_own_lower_limit_and_no_rate_headers(sandbox: HubSpotSandbox) -> None:
    sandbox.limits.search_per_second = 1
    sandbox.limits.burst_per_10s = 100
    path = "/crm/v3/objects/contacts/search"
    first = _call(sandbox, "POST", path, body=_search("email", "EQ", "a@example.com"))
    assert first.status_code == 200
    assert not [h for h in first.headers if h.lower().startswith("x-hubspot-ratelimit")]
    refused = _call(sandbox, "POST", path, body=_search("email", "EQ", "a@example.com"))
    assert refused.status_code == 429 and refused.json()["policyName"] == "SECONDLY"
    assert spec_check.response_errors(path, "POST", 429, refused.json()) == []
    assert _call(sandbox, "GET", "/crm/v3/owners").headers["X-HubSpot-RateLimit-Remaining"] == "99"


def _pkce() -> tuple[str, str]:
    verifier = "v" * 50
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _oauth_tokens(
    sandbox: HubSpotSandbox,
    version: str = "v1",
    scope: str = "oauth crm.objects.contacts.read crm.objects.owners.read",
) -> dict[str, Any]:
    """The authorization-code flow a public app runs: install, redirect, token."""
    verifier, challenge = _pkce()
    redirect_uri = "http://127.0.0.1:9/callback"
    installed = requests.get(
        f"{sandbox.url}/oauth/authorize",
        params={
            "client_id": sandbox.client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert installed.status_code == 302
    back = parse_qs(urlsplit(installed.headers["Location"]).query)
    assert back["state"] == ["s1"]
    form = {
        "grant_type": "authorization_code",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "redirect_uri": redirect_uri,
        "code": back["code"][0],
        "code_verifier": verifier,
    }
    assert spec_check.request_errors(f"/oauth/{version}/token", "POST", form) == []
    answer = requests.post(f"{sandbox.url}/oauth/{version}/token", data=form, timeout=10)
    assert answer.status_code == 200, answer.text
    assert spec_check.response_errors("/oauth/v3/token", "POST", 200, answer.json()) == []
    again = requests.post(f"{sandbox.url}/oauth/{version}/token", data=form, timeout=10)
    assert again.status_code == 400 and again.json()["status"] == "BAD_AUTH_CODE"
    tokens: dict[str, Any] = answer.json()
    return tokens


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_oauth_refresh_gives_a_new_access_token_and_keeps_the_refresh_token(
    sandbox: HubSpotSandbox, version: str
) -> None:
    tokens = _oauth_tokens(sandbox, version)
    assert tokens["expires_in"] == 1800 and tokens["token_type"] == "bearer"
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert _call(sandbox, "GET", "/crm/v3/owners", headers=bearer).status_code == 200
    sandbox.oauth.expire_access_tokens()
    expired = _call(sandbox, "GET", "/crm/v3/owners", headers=bearer)
    _error_checked(expired, 401, "EXPIRED_AUTHENTICATION")
    form = {
        "grant_type": "refresh_token",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "refresh_token": tokens["refresh_token"],
    }
    refreshed = requests.post(f"{sandbox.url}/oauth/{version}/token", data=form, timeout=10).json()
    assert refreshed["refresh_token"] == tokens["refresh_token"]  # HubSpot does not rotate it
    assert refreshed["access_token"] != tokens["access_token"]
    fresh = {"Authorization": f"Bearer {refreshed['access_token']}"}
    assert _call(sandbox, "GET", "/crm/v3/owners", headers=fresh).status_code == 200
    sandbox.oauth.revoke(tokens["refresh_token"])
    revoked = requests.post(f"{sandbox.url}/oauth/{version}/token", data=form, timeout=10)
    assert revoked.status_code == 400 and revoked.json()["status"] == "BAD_REFRESH_TOKEN"
    assert spec_check.response_errors("/oauth/v3/token", "POST", 400, revoked.json()) == []


def test_oauth_refuses_a_wrong_secret_redirect_or_verifier(sandbox: HubSpotSandbox) -> None:
    verifier, challenge = _pkce()
    params = {"client_id": sandbox.client_id, "redirect_uri": "http://127.0.0.1:9/cb"}
    params |= {"code_challenge": challenge, "scope": "oauth"}

    def code() -> str:
        answer = requests.get(
            f"{sandbox.url}/oauth/authorize", params=params, allow_redirects=False, timeout=10
        )
        return parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]

    base = {"grant_type": "authorization_code", "client_id": sandbox.client_id}
    base |= {"client_secret": sandbox.client_secret, "redirect_uri": params["redirect_uri"]}
    cases = {
        "BAD_CLIENT_SECRET": {"client_secret": "nope", "code_verifier": verifier},
        "BAD_REDIRECT_URI": {"redirect_uri": "http://127.0.0.1:9/other", "code_verifier": verifier},
        "BAD_AUTH_CODE": {"code_verifier": "w" * 50},
    }
    for reason, change in cases.items():
        answer = requests.post(
            f"{sandbox.url}/oauth/v1/token", data={**base, "code": code(), **change}, timeout=10
        )
        assert (answer.status_code, answer.json()["status"]) == (400, reason)


def test_a_lost_batch_create_is_done_and_found_again_by_its_key(sandbox: HubSpotSandbox) -> None:
    ann = sandbox.add_contact("ann@example.com")
    sandbox.search_lag = True  # search trails writes, as HubSpot's index does
    body = {
        "inputs": [{"properties": _email_properties("<lost@x>"), "associations": [_to(ann, 198)]}]
    }
    sandbox.lose_next_response(r"^/crm/v3/objects/emails/batch/create$")
    with pytest.raises(requests.ConnectionError):
        _call(sandbox, "POST", "/crm/v3/objects/emails/batch/create", body=body)
    assert [e["properties"]["maillink_key"] for e in sandbox.emails()] == ["<lost@x>"]
    searched = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/emails/search",
        body=_search("maillink_key", "EQ", "<lost@x>"),
    )
    assert searched.json()["total"] == 0  # not indexed yet: search cannot tell it was written
    lookup = {
        "idProperty": "maillink_key",
        "inputs": [{"id": "<lost@x>"}, {"id": "<new@x>"}],
        "properties": ["maillink_key"],
    }
    found = _call(sandbox, "POST", "/crm/v3/objects/emails/batch/read", body=lookup)
    assert found.status_code == 207
    assert [r["properties"]["maillink_key"] for r in found.json()["results"]] == ["<lost@x>"]
    assert found.json()["errors"][0]["context"]["ids"] == ["<new@x>"]
    duplicate = _call(sandbox, "POST", "/crm/v3/objects/emails/batch/create", body=body)
    _error_checked(duplicate, 409, "CONFLICT")
    assert len(sandbox.emails()) == 1
    sandbox.catch_up_search_index()
    searched = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/emails/search",
        body=_search("maillink_key", "EQ", "<lost@x>"),
    )
    assert searched.json()["total"] == 1


def test_injected_faults_are_served_and_requests_counted_per_endpoint(
    sandbox: HubSpotSandbox,
) -> None:
    sandbox.inject_server_error("/crm/v3/objects/emails/batch/create")
    body = {"inputs": [{"properties": _email_properties("<f@x>")}]}
    assert (
        _call(sandbox, "POST", "/crm/v3/objects/emails/batch/create", body=body).status_code == 502
    )
    assert sandbox.emails() == []
    assert (
        _call(sandbox, "POST", "/crm/v3/objects/emails/batch/create", body=body).status_code == 201
    )
    _call(sandbox, "POST", "/crm/v3/objects/contacts/search", body=_search("email", "EQ", "x@y.z"))
    assert sandbox.meter.requests["http"] == 3
    assert sandbox.meter.requests["objects.batch.create"] == 1
    assert sandbox.meter.requests["objects.search"] == 1
    assert [r.operation for r in sandbox.received] == ["objects.batch.create", "objects.search"]


def test_the_generated_team_loads_into_hubspot_as_into_pipedrive() -> None:
    from maillink.sandbox.google import GoogleSandbox
    from maillink.sandbox.seed import generate_team, load_team

    team = generate_team(messages=60, seed=11, now=NOW)
    with GoogleSandbox() as google, HubSpotSandbox(clock=lambda: NOW) as hubspot:
        load_team(team, google, hubspot)
        known = [p for p in team.persons if p.known]
        contacts = {c["id"]: c["properties"]["email"] for c in hubspot.objects("contacts")}
        assert sorted(contacts.values()) == sorted({p.email.lower() for p in known})
        deals = {d["id"]: d for d in hubspot.objects("deals")}
        for item in team.items:
            if item.person.crm_id is None:
                continue
            if item.kind == "lead":
                lead = next(x for x in hubspot.objects("leads") if x["id"] == item.crm_id)
                assert lead["associations"]["contacts"] == [item.person.crm_id]
                continue
            deal = deals[item.crm_id]
            assert deal["associations"]["contacts"] == [item.person.crm_id]
            assert deal["properties"]["createdate"] == iso(item.created)
            closed = item.status in ("won", "lost")
            assert deal["properties"]["hs_is_closed"] == str(closed).lower()


def test_a_token_without_the_scope_gets_hubspots_403(sandbox: HubSpotSandbox) -> None:
    tokens = _oauth_tokens(sandbox, scope="oauth crm.objects.contacts.read")
    assert tokens["scopes"] == ["crm.objects.contacts.read", "oauth"]
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    query = _search("email", "EQ", "ann@example.com")
    assert (
        _call(
            sandbox, "POST", "/crm/v3/objects/contacts/search", body=query, headers=bearer
        ).status_code
        == 200
    )
    refused = _call(sandbox, "POST", "/crm/v3/objects/deals/search", body=query, headers=bearer)
    body = _error_checked(refused, 403, "MISSING_SCOPES")
    assert body["errors"][0]["context"]["requiredGranularScopes"] == ["crm.objects.deals.read"]
    write = {"inputs": [{"properties": _email_properties("<s@x>")}]}
    emails = _call(
        sandbox, "POST", "/crm/v3/objects/emails/batch/create", body=write, headers=bearer
    )
    _error_checked(emails, 403, "MISSING_SCOPES")
    assert sandbox.emails() == []


SCOPED_CALLS = [
    ("objects.search", {"type_name": "contacts"}, "/crm/v3/objects/contacts/search", "POST"),
    ("objects.batch.read", {"type_name": "deals"}, "/crm/v3/objects/deals/batch/read", "POST"),
    ("objects.get", {"type_name": "leads"}, "/crm/v3/objects/leads/1", "GET"),
    (
        "objects.batch.create",
        {"type_name": "emails"},
        "/crm/v3/objects/emails/batch/create",
        "POST",
    ),
    (
        "objects.batch.update",
        {"type_name": "emails"},
        "/crm/v3/objects/emails/batch/update",
        "POST",
    ),
    ("objects.update", {"type_name": "emails"}, "/crm/v3/objects/emails/1", "PATCH"),
    ("objects.create", {"type_name": "contacts"}, "/crm/v3/objects/contacts", "POST"),
    ("owners.list", {}, "/crm/v3/owners", "GET"),
]


@pytest.mark.parametrize(("operation", "args", "path", "method"), SCOPED_CALLS)
def test_the_scopes_asked_for_are_the_specs(
    operation: str, args: dict[str, str], path: str, method: str
) -> None:
    from maillink.sandbox.hubspot import scopes

    _, found = spec_check.operation(path, method)
    allowed = {scope for entry in found["security"] for names in entry.values() for scope in names}
    [needed] = scopes.required(operation, args)
    assert needed and needed <= allowed, (needed, allowed)


def test_polling_search_finds_what_changed_since_and_pages_through_it(
    sandbox: HubSpotSandbox,
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    old = sandbox.add_deal("Old", ann, add_time=T0)
    deals = [sandbox.add_deal(f"Deal {n}", ann, add_time=T0) for n in range(3)]
    for n, deal in enumerate(deals):
        sandbox.close_deal(deal, won=True, at=T0 + timedelta(days=10 + n))
    since = _search(
        "hs_lastmodifieddate", "GTE", str(int((T0 + timedelta(days=5)).timestamp() * 1000))
    )
    since |= {
        "limit": 2,
        "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "DESCENDING"}],
    }
    seen: list[str] = []
    while True:
        page = _call(sandbox, "POST", "/crm/v3/objects/deals/search", body=since).json()
        assert page["total"] == 3
        seen += [d["id"] for d in page["results"]]
        if "paging" not in page:
            break
        since["after"] = page["paging"]["next"]["after"]
    assert seen == [str(d) for d in reversed(deals)] and str(old) not in seen
    unknown = _call(
        sandbox,
        "POST",
        "/crm/v3/objects/deals/search",
        body=_search("lastmodifieddate", "GTE", "0"),
    )
    assert "lastmodifieddate" in _error_checked(unknown, 400, "VALIDATION_ERROR")["message"]
    words = _search("dealname", "CONTAINS_TOKEN", "dea*")
    assert _call(sandbox, "POST", "/crm/v3/objects/deals/search", body=words).json()["total"] == 3


@pytest.mark.parametrize("policy", ["TEN_SECONDLY_ROLLING", "SECONDLY", "DAILY"])
def test_an_injected_429_has_hubspots_shape(sandbox: HubSpotSandbox, policy: str) -> None:
    sandbox.inject_rate_limit("/crm/v3/owners", policy)
    refused = _call(sandbox, "GET", "/crm/v3/owners")
    assert refused.status_code == 429 and refused.json()["policyName"] == policy
    assert spec_check.response_errors("/crm/v3/owners", "GET", 429, refused.json()) == []
    burst = policy == "TEN_SECONDLY_ROLLING"
    assert ("X-HubSpot-RateLimit-Max" in refused.headers) == burst
    assert _call(sandbox, "GET", "/crm/v3/owners").status_code == 200
    failed = sandbox.inject_server_error("/crm/v3/owners", status=503)
    answer = _call(sandbox, "GET", "/crm/v3/owners")
    assert answer.status_code == 503 and answer.json()["category"] == "INTERNAL_ERROR"
    assert failed.times == 0


def test_a_batch_with_one_refused_input_writes_nothing(sandbox: HubSpotSandbox) -> None:
    ann = sandbox.add_contact("ann@example.com")
    deal = sandbox.add_deal("Deal", ann, add_time=T0)
    good = _email_input(1, ann)
    bad = {"properties": _email_properties("<k2@x>"), "associations": [_to(999, 210)]}
    refused = _call(
        sandbox, "POST", "/crm/v3/objects/emails/batch/create", body={"inputs": [good, bad]}
    )
    _error_checked(refused, 400, "VALIDATION_ERROR")
    assert sandbox.emails() == [] and sandbox.associated_ids("contacts", ann, "emails") == []
    updates = [
        {"id": str(deal), "properties": {"dealname": "Renamed"}},
        {"id": str(deal), "properties": {"dealstage": "nowhere"}},
    ]
    path = "/crm/v3/objects/deals/batch/update"
    _error_checked(_call(sandbox, "POST", path, body={"inputs": updates}), 400, "VALIDATION_ERROR")
    assert sandbox.objects("deals")[0]["properties"]["dealname"] == "Deal"


def test_the_key_property_is_the_accounts_to_define() -> None:
    with HubSpotSandbox(maillink_key_property=False) as bare:
        body = {"inputs": [{"properties": _email_properties("<k@x>")}]}
        refused = _call(bare, "POST", "/crm/v3/objects/emails/batch/create", body=body)
        assert "maillink_key" in _error_checked(refused, 400, "VALIDATION_ERROR")["message"]
        lookup = {"idProperty": "maillink_key", "inputs": [{"id": "<k@x>"}], "properties": []}
        by_key = _call(bare, "POST", "/crm/v3/objects/emails/batch/read", body=lookup)
        _error_checked(by_key, 400, "VALIDATION_ERROR")
        bare.define_property("emails", "maillink_key", unique=True)
        assert (
            _call(bare, "POST", "/crm/v3/objects/emails/batch/create", body=body).status_code == 201
        )
        twice = {"inputs": [body["inputs"][0], body["inputs"][0]]}
        again = _call(bare, "POST", "/crm/v3/objects/emails/batch/create", body=twice)
        _error_checked(again, 400, "VALIDATION_ERROR")
        assert len(bare.emails()) == 1


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]], list[int]]]:
    """A webhook endpoint that keeps what it gets and answers the statuses it is told to."""
    from flask import Flask
    from flask import request as received

    from maillink.sandbox._server import ServerThread

    got: list[tuple[dict[str, str], bytes]] = []
    answers: list[int] = []
    app = Flask("receiver")

    @app.post("/hooks")
    def hooks() -> tuple[str, int]:
        got.append((dict(received.headers), received.get_data()))
        return "", answers.pop(0) if answers else 204

    with ServerThread(app) as running:
        yield f"{running.url}/hooks", got, answers


def test_webhooks_are_signed_batched_and_retried(
    sandbox: HubSpotSandbox,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]], list[int]],
) -> None:
    from maillink.sandbox.hubspot.webhooks import signature_v3

    url, got, answers = receiver
    stage = sandbox.webhooks.subscribe(url, "deal.propertyChange", "dealstage")
    deletion = sandbox.webhooks.subscribe(url, "deal.deletion")
    sandbox.webhooks.subscribe(url, "contact.propertyChange", "email")
    ann = sandbox.add_contact("ann@example.com")
    deal = sandbox.add_deal("Deal", ann, add_time=T0)
    sandbox.close_deal(deal, won=True, at=NOW)
    _call(sandbox, "DELETE", f"/crm/v3/objects/deals/{deal}")
    patch = {"properties": {"email": "ann@new.example"}}
    _call(sandbox, "PATCH", f"/crm/v3/objects/contacts/{ann}", body=patch)
    answers.append(503)
    assert sandbox.webhooks.deliver() == [503]
    assert sandbox.webhooks.deliver() == [204]
    headers, body = got[-1]
    events = json.loads(body)
    assert [(e["subscriptionId"], e["objectId"]) for e in events][:2] == [
        (stage, deal),
        (deletion, deal),
    ]
    assert events[0]["propertyValue"] == "closedwon" and events[0]["attemptNumber"] == 1
    assert events[2]["propertyName"] == "email" and events[2]["propertyValue"] == "ann@new.example"
    expected = signature_v3(
        sandbox.client_secret, "POST", url, body, headers["X-Hubspot-Request-Timestamp"]
    )
    assert headers["X-Hubspot-Signature-V3"] == expected
    assert sandbox.webhooks.deliver() == []  # nothing left
