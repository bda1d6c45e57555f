"""The Pipedrive sandbox's records and how Pipedrive shows them.

Persons, deals, leads, projects, activity types and activities, kept in memory, and their JSON
shapes as Pipedrive's OpenAPI specs (December 2025) describe them: v2 timestamps in RFC 3339
(`2025-01-01T10:20:00Z`), v1 leads in ISO 8601 with milliseconds, v1 projects and activity types
as `YYYY-MM-DD HH:MM:SS` in UTC. Fields the live API leaves empty are sent as null.
No HTTP here: `maillink.sandbox.pipedrive` serves these records.
"""

from __future__ import annotations

import html
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maillink.sandbox.pipedrive.webhooks import SandboxWebhooks

DEAL_STATUSES = ("open", "won", "lost", "deleted")
PROJECT_STATUSES = ("open", "completed", "canceled", "deleted")
LINK_FIELDS = ("deal_id", "lead_id", "project_id")  # an activity keeps one; deal > lead > project

# Pipedrive's default activity types (every new company has these).
DEFAULT_ACTIVITY_TYPES = (
    ("Call", "call"),
    ("Meeting", "meeting"),
    ("Task", "task"),
    ("Deadline", "deadline"),
    ("Email", "email"),
    ("Lunch", "lunch"),
)

# The request body of POST /api/v2/activities and PATCH /api/v2/activities/{id}, per the v2
# spec: field -> JSON type. The tests hold this table against the spec.
ACTIVITY_BODY_FIELDS: dict[str, str] = {
    "subject": "string",
    "type": "string",
    "owner_id": "integer",
    "deal_id": "integer",
    "lead_id": "string",
    "person_id": "integer",
    "org_id": "integer",
    "project_id": "integer",
    "due_date": "string",
    "due_time": "string",
    "duration": "string",
    "busy": "boolean",
    "done": "boolean",
    "location": "object",
    "participants": "array",
    "attendees": "array",
    "public_description": "string",
    "priority": "integer",
    "note": "string",
}
# null unlinks: the v2 spec does not say so, v1 declared lead_id and project_id nullable, and an
# activity moved from a deal to a lead must lose its deal.
NULLABLE_ACTIVITY_FIELDS = frozenset(LINK_FIELDS)
PARTICIPANT_FIELDS = {"person_id": "integer", "primary": "boolean"}

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^\d{2}:\d{2}(:\d{2})?$")
_LINE_BREAK = re.compile(r"<br\s*/?>|</p>|</div>|\n", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")


class InvalidBody(ValueError):
    """A request body Pipedrive would refuse with 400."""


def utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"{when!r} has no timezone: give the sandbox aware datetimes")
    return when.astimezone(UTC)


def v2_time(when: datetime | None) -> str | None:
    return None if when is None else utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def lead_time(when: datetime | None) -> str | None:
    if when is None:
        return None
    when = utc(when)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def v1_time(when: datetime | None) -> str | None:
    return None if when is None else utc(when).strftime("%Y-%m-%d %H:%M:%S")


def note_lines(note: str) -> list[str]:
    """The note's text lines, tags stripped and entities decoded (`<br>` and `</p>` end lines)."""
    return [html.unescape(_TAG.sub("", line)).strip() for line in _LINE_BREAK.split(note)]


def note_has_key(note: str | None, key: str) -> bool:
    return bool(note) and f"maillink-id: {key}" in note_lines(note or "")


@dataclass
class Person:
    id: int
    name: str
    emails: list[str]
    add_time: datetime
    update_time: datetime
    org_id: int | None = None


@dataclass
class User:
    """A user of the company (GET /api/v1/users): who may own activities."""

    id: int
    name: str
    email: str
    created: datetime
    active: bool = True
    is_you: bool = False  # the API token's user


TOKEN_USER = (1, "Sandbox Admin", "admin@pipedrive-sandbox.invalid")  # owns what names no owner


@dataclass
class Deal:
    id: int
    title: str
    person_id: int
    add_time: datetime
    update_time: datetime
    status: str = "open"
    won_time: datetime | None = None
    lost_time: datetime | None = None
    close_time: datetime | None = None
    deleted_at: datetime | None = None
    archive_time: datetime | None = None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


@dataclass
class Lead:
    id: str
    title: str
    person_id: int
    add_time: datetime
    update_time: datetime
    archive_time: datetime | None = None


@dataclass
class Project:
    id: int
    title: str
    person_id: int
    add_time: datetime
    update_time: datetime
    status: str = "open"
    status_change_time: datetime | None = None
    end_date: date | None = None
    archive_time: datetime | None = None


@dataclass
class Records:
    """Everything the sandbox Pipedrive company holds. Callers hold `lock` while they touch it."""

    persons: dict[int, Person] = field(default_factory=dict)
    deals: dict[int, Deal] = field(default_factory=dict)
    leads: dict[str, Lead] = field(default_factory=dict)
    projects: dict[int, Project] = field(default_factory=dict)
    activities: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: dict[int, User] = field(default_factory=dict)
    organizations: dict[int, str] = field(default_factory=dict)  # id -> name
    lock: threading.RLock = field(default_factory=threading.RLock)
    _next_id: dict[str, int] = field(default_factory=dict)
    webhooks: SandboxWebhooks | None = None  # told of every change, to notify the webhooks

    def __post_init__(self) -> None:
        self.add_token_user()

    def add_token_user(self) -> None:
        """The API token's user, as every company has one (id 1)."""
        uid, name, email = TOKEN_USER
        self.users[uid] = User(uid, name, email, datetime(2024, 1, 1, tzinfo=UTC), is_you=True)
        self._next_id["user"] = max(self._next_id.get("user", 0), uid)

    def next_id(self, kind: str) -> int:
        self._next_id[kind] = self._next_id.get(kind, 0) + 1
        return self._next_id[kind]

    def new_lead_id(self) -> str:
        return str(uuid.uuid4())

    def merge_persons(self, person_id: int, merge_with_id: int, at: datetime) -> Person:
        """Pipedrive's merge: `person_id` goes into `merge_with_id` (whose data wins), which takes
        its addresses, deals, leads, projects and activities; `person_id` is gone afterwards."""
        with self.lock:
            hooks = self.webhooks
            ids = (person_id, merge_with_id)
            snapshots = [hooks.before(self.persons[i]) for i in ids] if hooks else [None, None]
            gone = self.persons.pop(person_id)
            kept = self.persons[merge_with_id]
            lowered = {e.lower() for e in kept.emails}
            kept.emails += [e for e in gone.emails if e.lower() not in lowered]
            kept.update_time = utc(at)
            records: list[Deal | Lead | Project] = [
                *self.deals.values(),
                *self.leads.values(),
                *self.projects.values(),
            ]
            for record in records:
                if record.person_id == person_id:
                    record.person_id = merge_with_id
                    record.update_time = utc(at)
            for activity in self.activities.values():
                if activity.get("person_id") == person_id:
                    activity["person_id"] = merge_with_id
                seen: set[int] = set()
                participants: list[dict[str, Any]] = []
                for participant in activity.get("participants") or ():
                    pid = participant["person_id"]
                    pid = merge_with_id if pid == person_id else pid
                    if pid not in seen:
                        seen.add(pid)
                        participants.append({**participant, "person_id": pid})
                activity["participants"] = participants
            if hooks is not None:  # Pipedrive v2: a delete (with merged_to_id), then a change
                hooks.after(snapshots[0], None, merged_to_id=merge_with_id)
                hooks.after(snapshots[1], kept)
            return kept

    def clear(self) -> None:
        with self.lock:
            for table in (self.persons, self.deals, self.leads, self.projects, self.activities):
                table.clear()
            self.users.clear()
            self.organizations.clear()
            self._next_id.clear()
            self.add_token_user()


def activity_type_json(type_id: int, name: str, key: str) -> dict[str, Any]:
    return {
        "id": type_id,
        "order_nr": type_id,
        "name": name,
        "key_string": key,
        "icon_key": key,
        "active_flag": True,
        "color": "FFFFFF",
        "is_custom_flag": False,
        "add_time": "2019-10-04 16:24:55",
        "update_time": "2019-10-04 16:24:55",
    }


def person_json(person: Person) -> dict[str, Any]:
    """GET /api/v2/persons[/{id}]."""
    first, _, last = person.name.partition(" ")
    return {
        "id": person.id,
        "name": person.name,
        "first_name": first,
        "last_name": last,
        "owner_id": 1,
        "org_id": person.org_id,
        "add_time": v2_time(person.add_time),
        "update_time": v2_time(person.update_time),
        "emails": [
            {"value": email, "primary": i == 0, "label": "work"}
            for i, email in enumerate(person.emails)
        ],
        "phones": [],
        "is_deleted": False,
        "visible_to": 3,
        "label_ids": [],
        "picture_id": None,
        "custom_fields": {},
    }


def merged_person_json(person: Person, merged_id: int) -> dict[str, Any]:
    """PUT /api/v1/persons/{id}/merge: the person that stayed (v1 shape, `merge_what_id`)."""
    first, _, last = person.name.partition(" ")
    return {
        "id": person.id,
        "company_id": 1,
        "active_flag": True,
        "name": person.name,
        "first_name": first,
        "last_name": last,
        "owner_id": 1,
        "org_id": None,
        "merge_what_id": merged_id,
        "phone": [],
        "email": [
            {"value": email, "primary": i == 0, "label": "work"}
            for i, email in enumerate(person.emails)
        ],
        "first_char": (person.name[:1] or "?").lower(),
        "add_time": v1_time(person.add_time),
        "update_time": v1_time(person.update_time),
        "visible_to": "3",
        "label_ids": [],
    }


def person_search_json(
    person: Person, score: float, organization_name: str | None = None
) -> dict[str, Any]:
    """One `data.items[]` entry of GET /api/v2/persons/search."""
    return {
        "result_score": score,
        "item": {
            "id": person.id,
            "type": "person",
            "name": person.name,
            "phones": [],
            "emails": list(person.emails),
            "visible_to": 3,
            "owner": {"id": 1},
            "organization": (
                {"id": person.org_id, "name": organization_name}
                if person.org_id is not None
                else None
            ),
            "custom_fields": [],
            "notes": [],
        },
    }


def deal_json(deal: Deal) -> dict[str, Any]:
    """GET /api/v2/deals[/{id}] and /api/v2/deals/archived.

    A deleted deal has `is_deleted: true` and status "deleted" (the status the v2 list filter
    takes); the spec has no deletion time, so `update_time` is when it was deleted.
    """
    return {
        "id": deal.id,
        "title": deal.title,
        "owner_id": 1,
        "person_id": deal.person_id,
        "org_id": None,
        "pipeline_id": 1,
        "stage_id": 1,
        "value": 0,
        "currency": "USD",
        "add_time": v2_time(deal.add_time),
        "update_time": v2_time(deal.update_time),
        "stage_change_time": None,
        "is_deleted": deal.is_deleted,
        "is_archived": deal.archive_time is not None,
        "status": "deleted" if deal.is_deleted else deal.status,
        "probability": None,
        "lost_reason": None,
        "visible_to": 3,
        "close_time": v2_time(deal.close_time),
        "won_time": v2_time(deal.won_time),
        "lost_time": v2_time(deal.lost_time),
        "expected_close_date": None,
        "label_ids": [],
        "origin": "API",
        "origin_id": None,
        "channel": None,
        "channel_id": None,
        "arr": None,
        "mrr": None,
        "acv": None,
        "custom_fields": {},
    }


def lead_json(lead: Lead) -> dict[str, Any]:
    """GET /api/v1/leads and /api/v1/leads/archived. Leads carry no archive time: an archived
    lead's `update_time` is when it was archived."""
    return {
        "id": lead.id,
        "title": lead.title,
        "owner_id": 1,
        "creator_id": 1,
        "label_ids": [],
        "person_id": lead.person_id,
        "organization_id": None,
        "source_name": "API",
        "origin": "API",
        "origin_id": None,
        "channel": None,
        "channel_id": None,
        "is_archived": lead.archive_time is not None,
        "was_seen": False,
        "value": None,
        "expected_close_date": None,
        "next_activity_id": None,
        "add_time": lead_time(lead.add_time),
        "update_time": lead_time(lead.update_time),
        "visible_to": "3",
        "cc_email": f"company+1+lead{lead.id[:8]}@sandbox.pipedrivemail.com",
    }


def project_json(project: Project) -> dict[str, Any]:
    """GET /api/v1/projects."""
    return {
        "id": project.id,
        "title": project.title,
        "board_id": 1,
        "phase_id": 1,
        "description": "",
        "status": project.status,
        "owner_id": 1,
        "start_date": utc(project.add_time).date().isoformat(),
        "end_date": project.end_date.isoformat() if project.end_date else None,
        "deal_ids": [],
        "org_id": None,
        "person_id": project.person_id,
        "labels": [],
        "add_time": v1_time(project.add_time),
        "update_time": v1_time(project.update_time),
        "status_change_time": v1_time(project.status_change_time),
        "archive_time": v1_time(project.archive_time),
    }


def user_json(user: User) -> dict[str, Any]:
    """One entry of GET /api/v1/users (v1 times: `YYYY-MM-DD HH:MM:SS`, UTC)."""
    return {
        "id": user.id,
        "name": user.name,
        "default_currency": "EUR",
        "locale": "en_US",
        "lang": 1,
        "email": user.email,
        "phone": None,
        "activated": user.active,
        "last_login": v1_time(user.created),
        "created": v1_time(user.created),
        "modified": None,
        "has_created_company": user.is_you,
        "access": [{"app": "sales", "admin": user.is_you, "permission_set_id": "1"}],
        "active_flag": user.active,
        "timezone_name": "Europe/Tallinn",
        "timezone_offset": "+02:00",
        "role_id": 1,
        "icon_url": None,
        "is_you": user.is_you,
        "is_deleted": False,
    }


def activity_json(activity: dict[str, Any], *, attendees: bool = False) -> dict[str, Any]:
    """GET/POST/PATCH /api/v2/activities. `attendees` only with `include_fields=attendees`."""
    shown = {k: v for k, v in activity.items() if not k.startswith("_")}
    if not attendees:
        shown.pop("attendees", None)
    return shown


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, list)


def check_activity_body(body: Any) -> dict[str, Any]:
    """The body as Pipedrive v2 validates it: known fields, exact JSON types, no coercion."""
    if not isinstance(body, dict):
        raise InvalidBody("The request body must be a JSON object")
    for name, value in body.items():
        kind = ACTIVITY_BODY_FIELDS.get(name)
        if kind is None:
            raise InvalidBody(f'"{name}" is not allowed')
        if value is None and name in NULLABLE_ACTIVITY_FIELDS:
            continue
        if not _type_ok(value, kind):
            raise InvalidBody(f'"{name}" must be of type {kind}')
    if "due_date" in body and not _DATE.match(body["due_date"]):
        raise InvalidBody('"due_date" must be in format YYYY-MM-DD')
    if "due_time" in body and not _TIME.match(body["due_time"]):
        raise InvalidBody('"due_time" must be in format HH:MM')
    for participant in body.get("participants", []):
        if not isinstance(participant, dict) or "person_id" not in participant:
            raise InvalidBody('"participants" items must be objects with a person_id')
        for name, value in participant.items():
            kind = PARTICIPANT_FIELDS.get(name)
            if kind is None or not _type_ok(value, kind):
                raise InvalidBody(f'"participants[].{name}" is not allowed or ill-typed')
    return body


def one_link(activity: dict[str, Any]) -> None:
    """Keep one of deal, lead, project (Pipedrive's rule since March 2024: deal > lead > project)."""
    kept = False
    for name in LINK_FIELDS:
        if activity.get(name) is not None and not kept:
            kept = True
        else:
            activity[name] = None
