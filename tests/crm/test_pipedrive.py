"""The Pipedrive adapter against the Pipedrive sandbox, over real HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import openapi_check
from maillink.crm.base import (
    ActivityDraft,
    CRMAuthError,
    CRMRateLimited,
    CRMUnavailable,
)
from maillink.crm.pipedrive import TOKEN_COSTS, PipedriveCRM, WriteOutcomeUnknown
from maillink.crm.pipedrive_http import PaginationLoop, Paginator, PipedriveHTTP
from maillink.crm.pipedrive_items import note_has_key, parse_time
from maillink.model import ItemKind, ItemRef, ItemStatus
from maillink.sandbox._server import Fault
from maillink.sandbox.pipedrive import PipedriveSandbox

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0 = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
LINK_FIELDS = frozenset({"deal_id", "lead_id", "project_id"})


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


@pytest.fixture
def crm(sandbox: PipedriveSandbox) -> PipedriveCRM:
    return PipedriveCRM(sandbox.url, api_token=sandbox.api_token, include_archived=True)


def draft(key: str, person_ids: tuple[int, ...], *items: ItemRef, **changes: Any) -> ActivityDraft:
    fields: dict[str, Any] = {
        "key": key,
        "subject": "Quote for 40 seats",
        "when": datetime(2025, 5, 1, 16, 5, tzinfo=timezone(timedelta(hours=2))),
        "person_ids": person_ids,
        "items": items,
        "note": f"<b>From:</b> ann@example.com<br>\nmaillink-id: {key.replace('<', '&lt;').replace('>', '&gt;')}",
    }
    return ActivityDraft(**{**fields, **changes})


def deal(deal_id: int) -> ItemRef:
    return ItemRef(ItemKind.DEAL, str(deal_id))


# -- persons -----------------------------------------------------------------------------------


def test_person_is_found_by_email_whatever_its_case(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann Lee", ["Ann.Lee@Example.com", "ann@home.example"])
    found = crm.search_persons("ann.lee@EXAMPLE.com")
    assert [(p.id, p.name) for p in found] == [(ann, "Ann Lee")]
    assert "Ann.Lee@Example.com" in found[0].emails


def test_unknown_email_finds_no_person(sandbox: PipedriveSandbox, crm: PipedriveCRM) -> None:
    sandbox.add_person("Ann Lee", ["ann@example.com"])
    assert crm.search_persons("nobody@example.com") == []
    assert crm.search_persons("  ") == []


def test_search_results_that_are_not_the_exact_address_are_dropped(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    near = {"id": 7, "type": "person", "name": "Near", "emails": ["ann@example.com.au"]}
    exact = {"id": 8, "type": "person", "name": "Exact", "emails": ["ANN@example.com"]}
    body = {
        "success": True,
        "data": {"items": [{"result_score": 1, "item": near}, {"result_score": 1, "item": exact}]},
        "additional_data": {"next_cursor": None},
    }
    sandbox.faults.add(Fault(path="/api/v2/persons/search", status=200, body=json.dumps(body)))
    assert [p.id for p in crm.search_persons("ann@example.com")] == [8]


# -- items -------------------------------------------------------------------------------------


def test_by_default_archived_items_are_read_only_when_asked_for(sandbox: PipedriveSandbox) -> None:
    frugal = PipedriveCRM(sandbox.url, api_token=sandbox.api_token)
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    open_deal = sandbox.add_deal("Open", ann, add_time=T0)
    archived = sandbox.add_deal("Archived", ann, add_time=T0)
    sandbox.archive_deal(archived, NOW - timedelta(days=3))
    old_lead = sandbox.add_lead("Old lead", ann, add_time=T0, archived_at=T0 + timedelta(days=4))
    sandbox.meter.reset()

    assert {str(i.ref) for i in frugal.items_of_person(ann)} == {f"deal:{open_deal}"}
    assert sandbox.meter.requests["deals.archived"] == 0
    assert sandbox.meter.requests["leads.archived"] == 0
    assert {str(i.ref) for i in frugal.archived_items_of_person(ann)} == {
        f"deal:{archived}",
        f"lead:{old_lead}",
    }


def test_items_of_a_person_carry_their_status_and_dates(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    bob = sandbox.add_person("Bob", ["bob@example.com"])
    day = timedelta(days=1)
    refs = {
        "open": sandbox.add_deal("Open", ann, add_time=T0),
        "won": sandbox.add_deal("Won", ann, add_time=T0, status="won", close_time=T0 + 9 * day),
        "lost": sandbox.add_deal("Lost", ann, add_time=T0, status="lost", close_time=T0 + day),
        "deleted": sandbox.add_deal("Deleted", ann, add_time=T0),
        "archived": sandbox.add_deal("Archived", ann, add_time=T0),
    }
    sandbox.set_deal_status(refs["deleted"], "deleted", at=NOW - 2 * day)
    sandbox.archive_deal(refs["archived"], NOW - 3 * day)
    sandbox.add_deal("Bob's", bob, add_time=T0)
    lead = sandbox.add_lead("Lead", ann, add_time=T0 + day)
    old_lead = sandbox.add_lead("Old lead", ann, add_time=T0, archived_at=T0 + 4 * day)
    projects = {
        "open": sandbox.add_project("P open", ann, add_time=T0),
        "completed": sandbox.add_project(
            "P done", ann, add_time=T0, status="completed", closed_at=T0 + 20 * day
        ),
        "canceled": sandbox.add_project(
            "P canceled", ann, add_time=T0, status="canceled", closed_at=T0 + 5 * day
        ),
        "deleted": sandbox.add_project(
            "P deleted", ann, add_time=T0, status="deleted", closed_at=T0 + 6 * day
        ),
        "archived": sandbox.add_project("P archived", ann, add_time=T0, archived_at=T0 + 7 * day),
    }

    items = {str(item.ref): item for item in crm.items_of_person(ann)}

    def check(ref: str, status: ItemStatus, closed_at: datetime | None, created: datetime = T0):
        item = items.pop(ref)
        assert (item.status, item.closed_at, item.created_at) == (status, closed_at, created), ref
        assert item.person_ids == {ann}

    check(f"deal:{refs['open']}", ItemStatus.OPEN, None)
    check(f"deal:{refs['won']}", ItemStatus.WON, T0 + 9 * day)
    check(f"deal:{refs['lost']}", ItemStatus.LOST, T0 + day)
    check(f"deal:{refs['deleted']}", ItemStatus.DELETED, NOW - 2 * day)
    check(f"deal:{refs['archived']}", ItemStatus.CLOSED, NOW - 3 * day)
    check(f"lead:{lead}", ItemStatus.OPEN, None, T0 + day)
    check(f"lead:{old_lead}", ItemStatus.CLOSED, T0 + 4 * day)
    check(f"project:{projects['open']}", ItemStatus.OPEN, None)
    check(f"project:{projects['completed']}", ItemStatus.CLOSED, T0 + 20 * day)
    check(f"project:{projects['canceled']}", ItemStatus.CLOSED, T0 + 5 * day)
    check(f"project:{projects['deleted']}", ItemStatus.DELETED, T0 + 6 * day)
    check(f"project:{projects['archived']}", ItemStatus.CLOSED, T0 + 7 * day)
    assert items == {}  # Bob's deal is not Ann's


def test_projects_are_listed_once_for_many_persons_until_the_ttl_expires(
    sandbox: PipedriveSandbox,
) -> None:
    now = [0.0]
    crm = PipedriveCRM(
        sandbox.url, api_token=sandbox.api_token, projects_ttl=300.0, clock=lambda: now[0]
    )
    people = [sandbox.add_person(f"P{n}", [f"p{n}@example.com"]) for n in range(3)]
    for pid in people:
        sandbox.add_project(f"Project of {pid}", pid, add_time=T0)
    found = [crm.items_of_person(pid) for pid in people]
    assert [[item.title for item in items] for items in found] == [
        [f"Project of {pid}"] for pid in people
    ]
    assert sandbox.meter.requests["projects.list"] == 1
    now[0] = 301.0
    crm.items_of_person(people[0])
    assert sandbox.meter.requests["projects.list"] == 2


def test_changes_since_names_persons_whose_deals_changed_and_addresses_of_changed_persons(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    since = NOW - timedelta(days=10)
    ann, bob, carol, dave, erin = (
        sandbox.add_person(name, [f"{name.lower()}@example.com"])
        for name in ("Ann", "Bob", "Carol", "Dave", "Erin")
    )
    for pid in (ann, bob, carol, dave, erin):
        sandbox.update_person(pid, emails=sandbox.records.persons[pid].emails, at=T0)
    sandbox.update_person(
        bob, emails=["Bob@Example.org", "bob@example.com"], at=since + timedelta(1)
    )
    sandbox.add_deal("Untouched", ann, add_time=T0)
    won = sandbox.add_deal("Won", carol, add_time=T0)
    sandbox.set_deal_status(won, "won", at=NOW - timedelta(days=5))
    deleted = sandbox.add_deal("Deleted", dave, add_time=T0)
    sandbox.set_deal_status(deleted, "deleted", at=NOW - timedelta(days=2))
    archived = sandbox.add_deal("Archived", erin, add_time=T0)
    sandbox.archive_deal(archived, NOW - timedelta(days=1))

    changes = crm.changes_since(since)

    assert changes.person_ids == {carol, dave, erin}
    assert changes.emails == {"bob@example.org", "bob@example.com"}
    assert changes.until > since and changes.until.tzinfo is not None


# -- activities --------------------------------------------------------------------------------


def test_created_activity_is_a_done_email_at_the_messages_utc_time(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    bob = sandbox.add_person("Bob", ["bob@example.com"])
    deal_id = sandbox.add_deal("Deal", ann, add_time=T0)

    activity_id = crm.create_activity(draft("<m1@example.com>", (bob, ann), deal(deal_id)))

    [stored] = sandbox.activities()
    assert str(stored["id"]) == activity_id
    assert (stored["type"], stored["done"], stored["subject"]) == (
        "email",
        True,
        "Quote for 40 seats",
    )
    assert (stored["due_date"], stored["due_time"]) == ("2025-05-01", "14:05")
    assert stored["participants"] == [
        {"person_id": bob, "primary": True},
        {"person_id": ann, "primary": False},
    ]
    assert (stored["person_id"], stored["deal_id"], stored["lead_id"]) == (bob, deal_id, None)
    assert note_has_key(stored["note"], "<m1@example.com>")
    assert crm.activity_type() == "email"
    assert sandbox.meter.requests["activityTypes.list"] == 1  # looked up once


def test_update_moving_an_activity_to_another_kind_of_item_clears_the_old_link(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    deal_id = sandbox.add_deal("Deal", ann, add_time=T0)
    lead = sandbox.add_lead("Lead", ann, add_time=T0)
    project = sandbox.add_project("Project", ann, add_time=T0)
    activity_id = crm.create_activity(draft("k1", (ann,), deal(deal_id)))

    def links() -> tuple[Any, Any, Any]:
        [stored] = sandbox.activities()
        return stored["deal_id"], stored["lead_id"], stored["project_id"]

    crm.update_activity(activity_id, draft("k1", (ann,), ItemRef(ItemKind.LEAD, lead)))
    assert links() == (None, lead, None)
    crm.update_activity(activity_id, draft("k1", (ann,), ItemRef(ItemKind.PROJECT, str(project))))
    assert links() == (None, None, project)
    crm.update_activity(activity_id, draft("k1", (ann,)))
    assert links() == (None, None, None)


def test_request_bodies_and_query_parameters_are_those_of_the_spec(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    deal_id = sandbox.add_deal("Deal", ann, add_time=T0)
    lead = sandbox.add_lead("Lead", ann, add_time=T0)
    crm.search_persons("ann@example.com")
    crm.items_of_person(ann)
    crm.changes_since(T0)
    activity_id = crm.create_activity(draft("k1", (ann,), deal(deal_id)))
    crm.update_activity(activity_id, draft("k1", (ann,), ItemRef(ItemKind.LEAD, lead)))
    crm.find_activity("k1", ann)

    writes = 0
    for received in sandbox.received:
        allowed = openapi_check.query_parameters(received.path, received.method)
        assert set(received.query) <= allowed, (received.operation, received.query)
        if received.body is None:
            continue
        writes += 1
        nullable = LINK_FIELDS if received.method == "PATCH" else frozenset()
        assert (
            openapi_check.request_errors(
                received.path, received.method, received.body, nullable=nullable
            )
            == []
        ), received.operation
        # Without that allowance, the only objection is the explicit null of the old link.
        strict = openapi_check.request_errors(received.path, received.method, received.body)
        assert all(e.split(":")[0] in LINK_FIELDS for e in strict), strict
    assert writes == 2


def test_find_activity_reads_the_newest_pages_for_the_key(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    wanted = crm.create_activity(draft("<wanted@example.com>", (ann,)))
    for n in range(150):
        crm.create_activity(draft(f"<other-{n}@example.com>", (ann,)))
    sandbox.meter.reset()

    assert crm.find_activity("<wanted@example.com>", ann) == wanted
    assert sandbox.meter.requests["activities.list"] == 2  # 100 a page, newest first
    assert crm.find_activity("<other-149@example.com>", None) is not None  # company-wide

    crm.find_pages = 1
    sandbox.meter.reset()
    assert crm.find_activity("<wanted@example.com>", ann) is None  # beyond the bound
    assert crm.find_activity("<missing@example.com>", ann) is None
    assert sandbox.meter.requests["activities.list"] == 2


def test_find_activity_matches_the_whole_key_line_only() -> None:
    note = "<b>From:</b> a<br>\nmaillink-id: &lt;id-1@host&gt;"
    assert note_has_key(note, "<id-1@host>")
    assert note_has_key("<p>x</p><p>maillink-id: k</p>", "k")
    assert not note_has_key(note, "<id-1@host")
    assert not note_has_key("maillink-id: k2", "k")
    assert not note_has_key("quoted maillink-id: k", "k")
    assert not note_has_key(None, "k")


# -- failures ----------------------------------------------------------------------------------


def test_a_503_then_200_is_retried_after_retry_after(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    sandbox.add_deal("Deal", ann, add_time=T0)
    sandbox.faults.add(Fault(path="^/api/v2/deals$", status=503, headers={"Retry-After": "1"}))
    sleeps: list[float] = []  # what the client waits, recorded instead of slept
    crm.http = PipedriveHTTP(sandbox.url, api_token=sandbox.api_token, sleep=sleeps.append)
    assert [item.title for item in crm.items_of_person(ann)] == ["Deal"]
    assert sum(sleeps) >= 1.0
    assert sandbox.meter.statuses[503] == 1


def test_a_patch_is_retried_after_a_5xx(sandbox: PipedriveSandbox, crm: PipedriveCRM) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    activity_id = crm.create_activity(draft("k1", (ann,)))
    sandbox.faults.add(Fault(path="/api/v2/activities/", method="PATCH", status=502, times=2))
    crm.update_activity(activity_id, draft("k1", (ann,), subject="Renamed"))
    assert sandbox.activities()[0]["subject"] == "Renamed"
    assert sandbox.meter.statuses[502] == 2


def test_a_create_is_not_retried_after_a_5xx_as_it_may_have_been_written(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    crm.activity_type()
    sandbox.faults.add(Fault(path="^/api/v2/activities$", method="POST", status=500))
    with pytest.raises(WriteOutcomeUnknown):
        crm.create_activity(draft("k1", (ann,)))
    assert sandbox.meter.statuses[500] == 1  # sent once


def test_lost_response_after_a_create_is_unknown_and_found_again_by_key(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    sandbox.lose_next_response(r"^/api/v2/activities$", method="POST")
    with pytest.raises(CRMUnavailable) as raised:
        crm.create_activity(draft("<lost@example.com>", (ann,)))
    assert isinstance(raised.value, WriteOutcomeUnknown)
    [written] = sandbox.activities_with_key("<lost@example.com>")
    assert sandbox.meter.requests["activities.create"] == 1  # not sent again
    assert crm.find_activity("<lost@example.com>", ann) == str(written["id"])


def test_burst_429_is_waited_out(sandbox: PipedriveSandbox, crm: PipedriveCRM) -> None:
    sandbox.add_person("Ann", ["ann@example.com"])
    sandbox.burst_per_2s = 3
    sleeps: list[float] = []  # the sandbox's window is real time: recorded, and slept

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    crm.http = PipedriveHTTP(sandbox.url, api_token=sandbox.api_token, sleep=sleep)
    found = [crm.search_persons("ann@example.com") for _ in range(5)]
    assert all(len(persons) == 1 for persons in found)
    assert sandbox.meter.statuses[429] >= 1
    assert sum(sleeps) < 10


def test_spent_daily_budget_raises_rate_limited_daily_at_once(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    sandbox.add_person("Ann", ["ann@example.com"])
    sandbox.daily_token_budget = 30
    crm.search_persons("ann@example.com")
    crm.search_persons("ann@example.com")  # 10 tokens were left: allowed
    with pytest.raises(CRMRateLimited) as raised:
        crm.search_persons("ann@example.com")
    assert raised.value.daily is True
    assert 0 < raised.value.retry_after <= 86400
    assert sandbox.meter.statuses[429] == 1  # no retry


def test_burst_429_with_a_long_reset_is_raised_instead_of_waited(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    headers = {"x-ratelimit-reset": "120", "x-ratelimit-remaining": "0"}
    sandbox.faults.add(Fault(path="/api/v1/activityTypes", status=429, headers=headers))
    with pytest.raises(CRMRateLimited) as raised:
        crm.activity_type()
    assert (raised.value.daily, raised.value.retry_after) == (False, 120)


def test_refused_token_raises_auth_error_without_retrying(sandbox: PipedriveSandbox) -> None:
    crm = PipedriveCRM(sandbox.url, api_token="revoked")
    with pytest.raises(CRMAuthError):
        crm.search_persons("ann@example.com")
    assert sandbox.meter.statuses[401] == 1


def test_oauth_token_is_sent_as_a_bearer(sandbox: PipedriveSandbox) -> None:
    crm = PipedriveCRM(sandbox.url, oauth_token=sandbox.oauth_token)
    assert crm.activity_type() == "email"
    with pytest.raises(ValueError):
        PipedriveCRM(sandbox.url, api_token="a", oauth_token="b")


def test_unreachable_pipedrive_is_unavailable_after_the_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    crm = PipedriveCRM(f"http://127.0.0.1:{port}", api_token="t", max_retries=1, timeout=2)
    with pytest.raises(CRMUnavailable):
        crm.search_persons("ann@example.com")
    assert crm.requests_made == 2


def test_plain_http_is_refused_for_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        PipedriveCRM("http://acme.pipedrive.com", api_token="t")
    PipedriveCRM("https://acme.pipedrive.com", api_token="t")
    PipedriveCRM("http://localhost:8080", api_token="t")


def test_paginator_refuses_a_repeated_cursor_or_a_standing_offset() -> None:
    cursors = Paginator()
    cursors.advance({"data": [1], "additional_data": {"next_cursor": "abc"}})
    assert cursors.params == {"cursor": "abc"}
    cursors.advance({"data": [2], "additional_data": {"next_cursor": "def"}})
    with pytest.raises(PaginationLoop):
        cursors.advance({"data": [3], "additional_data": {"next_cursor": "abc"}})

    offsets = Paginator()
    page = {"start": 0, "limit": 2, "more_items_in_collection": True}
    offsets.advance({"data": [1, 2], "additional_data": page})
    assert offsets.params == {"start": 2}
    with pytest.raises(PaginationLoop):
        offsets.advance({"data": [], "additional_data": {**page, "start": 2}})

    nested = Paginator()
    nested.advance(
        {
            "data": [1],
            "additional_data": {
                "pagination": {"start": 0, "more_items_in_collection": True, "next_start": 1}
            },
        }
    )
    assert nested.params == {"start": 1}
    nested.advance({"data": [2], "additional_data": {"next_cursor": None}})
    assert nested.finished


# -- accounting --------------------------------------------------------------------------------


def test_token_costs_are_the_specs() -> None:
    paths = {
        "persons.search": ("/api/v2/persons/search", "GET"),
        "persons.list": ("/api/v2/persons", "GET"),
        "deals.list": ("/api/v2/deals", "GET"),
        "deals.archived": ("/api/v2/deals/archived", "GET"),
        "leads.list": ("/api/v1/leads", "GET"),
        "leads.archived": ("/api/v1/leads/archived", "GET"),
        "projects.list": ("/api/v1/projects", "GET"),
        "activityTypes.list": ("/api/v1/activityTypes", "GET"),
        "activities.list": ("/api/v2/activities", "GET"),
        "activities.create": ("/api/v2/activities", "POST"),
        "activities.update": ("/api/v2/activities/1", "PATCH"),
        "persons.create": ("/api/v2/persons", "POST"),
        "users.list": ("/api/v1/users", "GET"),
        "webhooks.list": ("/api/v1/webhooks", "GET"),
        "webhooks.create": ("/api/v1/webhooks", "POST"),
        "webhooks.delete": ("/api/v1/webhooks/1", "DELETE"),
    }
    assert set(TOKEN_COSTS) == set(paths)
    for operation, (path, method) in paths.items():
        assert TOKEN_COSTS[operation] == openapi_check.token_cost(path, method), operation


def test_tokens_and_requests_the_adapter_counts_are_what_pipedrive_charged(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    crm.search_persons("ann@example.com")
    crm.items_of_person(ann)
    activity_id = crm.create_activity(draft("k1", (ann,)))
    crm.update_activity(activity_id, draft("k1", (ann,)))
    crm.find_activity("k1", ann)
    assert (
        crm.tokens_spent
        == sandbox.meter.total_units
        == 20 + 10 + 20 + 20 + 40 + 20 + 20 + 5 + 5 + 10
    )
    assert crm.requests_made == sandbox.meter.requests["http"] == 10


def test_pipedrive_times_become_aware_utc_datetimes() -> None:
    expected = datetime(2025, 1, 6, 10, 0, 5, tzinfo=UTC)
    assert parse_time("2025-01-06T10:00:05Z") == expected
    assert parse_time("2025-01-06T10:00:05.000Z") == expected
    assert parse_time("2025-01-06 10:00:05") == expected
    assert parse_time("2025-01-06T12:00:05+02:00") == expected
    assert parse_time("2025-01-06") == datetime(2025, 1, 6, tzinfo=UTC)
    assert parse_time(None) is None and parse_time("soon") is None
