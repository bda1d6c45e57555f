"""The Pipedrive sandbox's endpoints: what each operation answers, from the records it holds.

One method per operation; `ROUTES` maps Pipedrive's paths to them under operation names
("persons.search", "deals.list"…) that the meter and `TOKEN_COSTS` use.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Response, jsonify, request

from maillink.sandbox.pipedrive.data import (
    DEAL_STATUSES,
    PROJECT_STATUSES,
    InvalidBody,
    Person,
    Records,
    activity_json,
    check_activity_body,
    deal_json,
    lead_json,
    one_link,
    person_json,
    person_search_json,
    project_json,
    user_json,
    v2_time,
)
from maillink.sandbox.pipedrive.query import (
    ApiError,
    bool_arg,
    choices_arg,
    cursor_list,
    cursor_page,
    ids_arg,
    int_arg,
    offset_list,
    sort_as_asked,
    updated_between,
)

# Operation name -> token cost (the specs' x-token-cost). The tests hold it against the specs.
TOKEN_COSTS: dict[str, int] = {
    "persons.search": 20,
    "persons.list": 10,
    "persons.get": 1,
    "deals.list": 10,
    "deals.archived": 20,
    "deals.get": 1,
    "leads.list": 20,
    "leads.archived": 40,
    "projects.list": 20,
    "activityTypes.list": 20,
    "activities.list": 10,
    "activities.get": 1,
    "activities.create": 5,
    "activities.update": 5,
    "persons.create": 5,
    "users.list": 20,
}

# Query parameters each v2 operation accepts (v2 refuses others); v1 ignores unknown ones.
_V2_LIST = {"filter_id", "ids", "owner_id", "updated_since", "updated_until", "sort_by"}
_V2_LIST |= {"sort_direction", "include_fields", "limit", "cursor"}
V2_QUERY_PARAMS: dict[str, frozenset[str]] = {
    "persons.search": frozenset(
        {"term", "fields", "exact_match", "organization_id", "include_fields", "limit", "cursor"}
    ),
    "persons.list": frozenset(_V2_LIST | {"org_id", "custom_fields"}),
    "persons.get": frozenset({"include_fields", "custom_fields"}),
    "deals.list": frozenset(_V2_LIST | {"person_id", "org_id", "pipeline_id", "stage_id"})
    | {"status", "custom_fields"},
    "deals.get": frozenset({"include_fields", "custom_fields"}),
    "activities.list": frozenset(_V2_LIST | {"deal_id", "lead_id", "person_id", "org_id", "done"}),
    "activities.get": frozenset({"include_fields"}),
    "activities.create": frozenset(),
    "activities.update": frozenset(),
    "persons.create": frozenset(),
}
V2_QUERY_PARAMS["deals.archived"] = V2_QUERY_PARAMS["deals.list"]

_KINDS = {"deal_id": "Deal", "lead_id": "Lead", "project_id": "Project", "person_id": "Person"}
_DELETED_DEALS_KEPT = timedelta(days=30)  # status=deleted shows deals deleted in the last 30 days


class PipedriveViews:
    """The sandbox company's API over `records`."""

    def __init__(
        self,
        records: Records,
        activity_types: list[dict[str, Any]],
        clock: Callable[[], datetime],
    ):
        self.records = records
        self.activity_types = activity_types
        self.clock = clock

    def routes(self) -> list[tuple[str, str, Callable[..., Response], str]]:
        """(path rule, operation, view, method) of every endpoint."""
        return [
            ("/api/v2/persons/search", "persons.search", self.persons_search, "GET"),
            ("/api/v2/persons", "persons.list", self.persons_list, "GET"),
            ("/api/v2/persons/<int:person_id>", "persons.get", self.persons_get, "GET"),
            ("/api/v2/persons", "persons.create", self.persons_create, "POST"),
            ("/api/v2/deals", "deals.list", self.deals_list, "GET"),
            ("/api/v2/deals/archived", "deals.archived", self.deals_archived, "GET"),
            ("/api/v2/deals/<int:deal_id>", "deals.get", self.deals_get, "GET"),
            ("/api/v1/leads", "leads.list", self.leads_list, "GET"),
            ("/api/v1/leads/archived", "leads.archived", self.leads_archived, "GET"),
            ("/api/v1/projects", "projects.list", self.projects_list, "GET"),
            ("/api/v1/activityTypes", "activityTypes.list", self.activity_types_list, "GET"),
            ("/api/v1/users", "users.list", self.users_list, "GET"),
            ("/api/v2/activities", "activities.list", self.activities_list, "GET"),
            ("/api/v2/activities", "activities.create", self.activities_create, "POST"),
            ("/api/v2/activities/<int:activity_id>", "activities.get", self.activities_get, "GET"),
            (
                "/api/v2/activities/<int:activity_id>",
                "activities.update",
                self.activities_update,
                "PATCH",
            ),
        ]

    # -- persons -----------------------------------------------------------------------------

    def persons_search(self) -> Response:
        term = request.args.get("term", "").strip()
        exact = bool_arg("exact_match") or False
        fields = choices_arg("fields", ("custom_fields", "email", "notes", "phone", "name"))
        fields = fields or ["email", "name"]
        if len(term) < (1 if exact else 2):
            raise ApiError(400, '"term" must be at least 2 characters long (1 with exact_match)')
        wanted = term.lower()

        def matches(value: str) -> bool:
            return value.lower() == wanted if exact else wanted in value.lower()

        with self.records.lock:
            found = [
                person_search_json(
                    person,
                    1.0 if exact else 0.5,
                    self.records.organizations.get(person.org_id or 0),
                )
                for person in self.records.persons.values()
                if ("email" in fields and any(matches(e) for e in person.emails))
                or ("name" in fields and matches(person.name))
            ]
        page, next_cursor = cursor_page(found)
        return jsonify(
            {
                "success": True,
                "data": {"items": page},
                "additional_data": {"next_cursor": next_cursor},
            }
        )

    def persons_list(self) -> Response:
        ids = ids_arg()
        with self.records.lock:
            persons = [
                p
                for p in self.records.persons.values()
                if updated_between(p.update_time) and (not ids or p.id in ids)
            ]
            persons = sort_as_asked(persons, ("id", "update_time", "add_time"), _attr_key)
            return cursor_list([person_json(p) for p in persons])

    def persons_get(self, person_id: int) -> Response:
        with self.records.lock:
            person = self.records.persons.get(person_id)
            if person is None:
                raise ApiError(404, "Person not found")
            return jsonify({"success": True, "data": person_json(person)})

    def persons_create(self) -> Response:
        """POST /api/v2/persons: a name (required, as Pipedrive requires it) and addresses."""
        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "Name must be given")
        entries = body.get("emails") or []
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("value"), str) for e in entries
        ):
            raise ApiError(400, "emails must be a list of objects with a value")
        now = self.clock()
        with self.records.lock:
            pid = self.records.next_id("person")
            emails = [e["value"].strip() for e in entries if e["value"].strip()]
            person = Person(pid, name.strip(), emails, now, now)
            self.records.persons[pid] = person
            if self.records.webhooks is not None:
                self.records.webhooks.created(person, source="api")
            return jsonify({"success": True, "data": person_json(person)})

    # -- deals -------------------------------------------------------------------------------

    def deals_list(self) -> Response:
        return self._deals(archived=False)

    def deals_archived(self) -> Response:
        return self._deals(archived=True)

    def _deals(self, *, archived: bool) -> Response:
        statuses = choices_arg("status", DEAL_STATUSES)
        person_id = int_arg("person_id")
        ids = ids_arg()
        horizon = self.clock() - _DELETED_DEALS_KEPT
        with self.records.lock:
            deals = []
            for deal in self.records.deals.values():
                if (deal.archive_time is not None) != archived:
                    continue
                if deal.deleted_at is not None:
                    if "deleted" not in statuses or deal.deleted_at < horizon:
                        continue
                elif statuses and deal.status not in statuses:
                    continue
                if person_id is not None and deal.person_id != person_id:
                    continue
                if ids and deal.id not in ids:
                    continue
                if updated_between(deal.update_time):
                    deals.append(deal)
            deals = sort_as_asked(deals, ("id", "update_time", "add_time"), _attr_key)
            return cursor_list([deal_json(d) for d in deals])

    def deals_get(self, deal_id: int) -> Response:
        with self.records.lock:
            deal = self.records.deals.get(deal_id)
            if deal is None:
                raise ApiError(404, "Deal not found")
            return jsonify({"success": True, "data": deal_json(deal)})

    # -- leads, projects, activity types (v1) ------------------------------------------------

    def leads_list(self) -> Response:
        return self._leads(archived=False)

    def leads_archived(self) -> Response:
        return self._leads(archived=True)

    def _leads(self, *, archived: bool) -> Response:
        person_id = int_arg("person_id")
        with self.records.lock:
            leads = sorted(
                (
                    lead
                    for lead in self.records.leads.values()
                    if (lead.archive_time is not None) == archived
                    and (person_id is None or lead.person_id == person_id)
                ),
                key=lambda lead: lead.add_time,
            )
            return offset_list([lead_json(lead) for lead in leads])

    def projects_list(self) -> Response:
        statuses = choices_arg("status", PROJECT_STATUSES) or ["open", "completed", "canceled"]
        include_archived = request.args.get("include_archived", "false").lower() in ("true", "1")
        with self.records.lock:
            projects = [
                project_json(p)
                for p in self.records.projects.values()
                if p.status in statuses and (include_archived or p.archive_time is None)
            ]
        return cursor_list(projects)

    def activity_types_list(self) -> Response:
        return jsonify({"success": True, "data": self.activity_types})

    def users_list(self) -> Response:
        """GET /api/v1/users: every user of the company, deactivated ones too (one page)."""
        with self.records.lock:
            users = sorted(self.records.users.values(), key=lambda u: u.id)
            return jsonify({"success": True, "data": [user_json(u) for u in users]})

    # -- activities --------------------------------------------------------------------------

    def activities_list(self) -> Response:
        filters = {name: int_arg(name) for name in ("person_id", "deal_id", "owner_id")}
        lead_id = request.args.get("lead_id")
        done = bool_arg("done")
        ids = ids_arg()
        attendees = request.args.get("include_fields") == "attendees"
        with self.records.lock:
            selected = []
            for activity in self.records.activities.values():
                if activity["is_deleted"]:
                    continue
                if any(v is not None and activity.get(k) != v for k, v in filters.items()):
                    continue
                if lead_id is not None and activity.get("lead_id") != lead_id:
                    continue
                if done is not None and activity["done"] != done:
                    continue
                if ids and activity["id"] not in ids:
                    continue
                if updated_between(activity["_update_time"]):
                    selected.append(activity)
            fields = ("id", "update_time", "add_time", "due_date")
            selected = sort_as_asked(selected, fields, _activity_key)
            return cursor_list([activity_json(a, attendees=attendees) for a in selected])

    def activities_get(self, activity_id: int) -> Response:
        with self.records.lock:
            activity = self.records.activities.get(activity_id)
            if activity is None or activity["is_deleted"]:
                raise ApiError(404, "Activity not found")
            attendees = request.args.get("include_fields") == "attendees"
            return jsonify({"success": True, "data": activity_json(activity, attendees=attendees)})

    def activities_create(self) -> Response:
        body = self._activity_body()
        now = self.clock()
        with self.records.lock:
            self._check_references(body)
            aid = self.records.next_id("activity")
            activity: dict[str, Any] = {
                "id": aid,
                "subject": "Call",
                "type": "call",
                "owner_id": 1,
                "creator_user_id": 1,
                "is_deleted": False,
                "add_time": v2_time(now),
                "update_time": v2_time(now),
                "deal_id": None,
                "lead_id": None,
                "person_id": None,
                "org_id": None,
                "project_id": None,
                "due_date": None,
                "due_time": None,
                "duration": None,
                "busy": False,
                "done": False,
                "marked_as_done_time": None,
                "location": None,
                "participants": [],
                "attendees": [],
                "conference_meeting_client": None,
                "conference_meeting_url": None,
                "conference_meeting_id": None,
                "public_description": None,
                "priority": None,
                "note": None,
                "_add_time": now,
                "_update_time": now,
            }
            self._apply(activity, body, now)
            self.records.activities[aid] = activity
            return jsonify({"success": True, "data": activity_json(activity)})

    def activities_update(self, activity_id: int) -> Response:
        body = self._activity_body()
        now = self.clock()
        with self.records.lock:
            activity = self.records.activities.get(activity_id)
            if activity is None or activity["is_deleted"]:
                raise ApiError(404, "Activity not found")
            self._check_references(body)
            self._apply(activity, body, now)
            activity["update_time"], activity["_update_time"] = v2_time(now), now
            return jsonify({"success": True, "data": activity_json(activity)})

    def _activity_body(self) -> dict[str, Any]:
        try:
            return check_activity_body(request.get_json(silent=True))
        except InvalidBody as exc:
            raise ApiError(400, str(exc)) from None

    def _check_references(self, body: dict[str, Any]) -> None:
        records = self.records
        known = {
            "deal_id": lambda v: v in records.deals and records.deals[v].deleted_at is None,
            "lead_id": lambda v: v in records.leads,
            "project_id": lambda v: v in records.projects,
            "person_id": lambda v: v in records.persons,
        }
        # Pipedrive refuses a write naming a record it no longer has (deleted, merged away)
        # with 400 and the record's kind: "Deal with id 12 not found".
        for name, exists in known.items():
            value = body.get(name)
            if value is not None and not exists(value):
                raise ApiError(400, f"{_KINDS[name]} with id {value} not found")
        for participant in body.get("participants", []):
            if participant["person_id"] not in records.persons:
                raise ApiError(400, f"Person with id {participant['person_id']} not found")
        if "type" in body and body["type"] not in {t["key_string"] for t in self.activity_types}:
            raise ApiError(400, f"type {body['type']!r} is not an activity type of this company")
        # An owner must be an active user of the company, an organization one it has (the
        # spec names no error: modelled as the 400 it gives for the other records).
        owner = body.get("owner_id")
        user = records.users.get(owner) if owner is not None else None
        if owner is not None and (user is None or not user.active):
            raise ApiError(400, f"User with id {owner} not found")
        org = body.get("org_id")
        if org is not None and org not in records.organizations:
            raise ApiError(400, f"Organization with id {org} not found")

    @staticmethod
    def _apply(activity: dict[str, Any], body: dict[str, Any], now: datetime) -> None:
        """Merge a POST/PATCH body into the activity, as Pipedrive does."""
        if body.get("done") and not activity["done"]:
            activity["marked_as_done_time"] = v2_time(now)
        elif body.get("done") is False:
            activity["marked_as_done_time"] = None
        participants = body.get("participants")
        for name, value in body.items():
            activity[name] = value
        if participants is not None:
            primary = next((p for p in participants if p.get("primary")), None)
            primary = primary or (participants[0] if participants else None)
            activity["participants"] = [
                {"person_id": p["person_id"], "primary": p is primary} for p in participants
            ]
            if "person_id" not in body:
                activity["person_id"] = primary["person_id"] if primary else None
        elif "person_id" in body:
            pid = body["person_id"]
            activity["participants"] = [] if pid is None else [{"person_id": pid, "primary": True}]
        one_link(activity)


def _attr_key(record: Any, field: str) -> tuple[Any, int]:
    return (getattr(record, field), record.id)


def _activity_key(activity: dict[str, Any], field: str) -> tuple[Any, ...]:
    if field == "add_time":
        return (activity["_add_time"], activity["id"])
    if field == "update_time":
        return (activity["_update_time"], activity["id"])
    if field == "due_date":
        return (activity["due_date"] or "", activity["due_time"] or "", activity["id"])
    return (activity["id"],)
