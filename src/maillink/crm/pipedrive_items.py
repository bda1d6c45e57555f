"""Pipedrive records as the linking rules see them: persons, and deals, leads, projects as Items.

Pure functions, no I/O. Pipedrive writes times three ways (v2 `2025-01-01T10:20:00Z`, v1 leads
`2025-01-01T10:20:00.123Z`, v1 projects `2025-01-01 10:20:00` in UTC): all become aware UTC datetimes.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Any

from maillink.model import CrmUser, Item, ItemKind, ItemRef, ItemStatus, Person

_LINE_BREAK = re.compile(r"<br\s*/?>|</p>|</div>|\n", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")


def parse_time(value: Any) -> datetime | None:
    """A Pipedrive timestamp or date as an aware UTC datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def rfc3339(when: datetime) -> str:
    """The form v2's `updated_since` takes (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def note_has_key(note: Any, key: str) -> bool:
    """Does the note have the line `maillink-id: <key>`? Lines end at `<br>`, `</p>` or a newline;
    tags are dropped and HTML entities decoded, so an escaped `&lt;id@host&gt;` matches `<id@host>`."""
    if not isinstance(note, str) or not note:
        return False
    wanted = f"maillink-id: {key}"
    return any(
        html.unescape(_TAG.sub("", line)).strip() == wanted for line in _LINE_BREAK.split(note)
    )


def person_from_search(result: dict[str, Any]) -> Person | None:
    """A `data.items[].item` of GET /api/v2/persons/search."""
    item = result.get("item") or {}
    if not isinstance(item.get("id"), int):
        return None
    emails = tuple(e for e in item.get("emails") or () if isinstance(e, str))
    organization = item.get("organization")
    org_id = organization.get("id") if isinstance(organization, dict) else None
    return Person(
        id=item["id"],
        name=str(item.get("name") or ""),
        emails=emails,
        organization_id=_record_id(org_id),
    )


def person_from_list(person: dict[str, Any]) -> Person | None:
    """A GET /api/v2/persons record (its addresses lower-cased); None without an id or when
    Pipedrive marks it deleted."""
    if not isinstance(person.get("id"), int) or person.get("is_deleted"):
        return None
    emails = tuple(dict.fromkeys(person_emails(person)))
    return Person(
        id=person["id"],
        name=str(person.get("name") or ""),
        emails=emails,
        organization_id=_record_id(person.get("org_id")),
    )


def _record_id(value: Any) -> str | None:
    """An integer id as maillink keeps it (a string); None when there is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def user_from_list(user: dict[str, Any]) -> CrmUser | None:
    """A GET /api/v1/users record; None when it has no id or address, or is not active
    (deactivated or deleted users cannot own activities)."""
    if not isinstance(user.get("id"), int) or not isinstance(user.get("email"), str):
        return None
    if user.get("active_flag") is False or user.get("is_deleted"):
        return None
    return CrmUser(
        id=str(user["id"]), email=user["email"].strip().lower(), name=str(user.get("name") or "")
    )


def person_emails(person: dict[str, Any]) -> list[str]:
    """The addresses of a GET /api/v2/persons record, lower-cased."""
    found = []
    for entry in person.get("emails") or ():
        value = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(value, str) and value.strip():
            found.append(value.strip().lower())
    return found


def _person_ids(record: dict[str, Any]) -> frozenset[int]:
    pid = record.get("person_id")
    if isinstance(pid, int | float) and not isinstance(pid, bool):
        return frozenset({int(pid)})
    return frozenset()


def deal_item(deal: dict[str, Any]) -> Item | None:
    """A v2 deal. Deleted (`is_deleted`, or status "deleted") dates from its last update;
    an archived open deal counts as closed when archived."""
    created = parse_time(deal.get("add_time"))
    if created is None or deal.get("id") is None:
        return None
    status_text = str(deal.get("status") or "open")
    updated = parse_time(deal.get("update_time"))
    status, closed_at = ItemStatus.OPEN, None
    if deal.get("is_deleted") or status_text == "deleted":
        status, closed_at = ItemStatus.DELETED, updated
    elif status_text == "won":
        closed = parse_time(deal.get("won_time")) or parse_time(deal.get("close_time"))
        status, closed_at = ItemStatus.WON, closed or updated
    elif status_text == "lost":
        closed = parse_time(deal.get("lost_time")) or parse_time(deal.get("close_time"))
        status, closed_at = ItemStatus.LOST, closed or updated
    elif deal.get("is_archived"):
        status, closed_at = ItemStatus.CLOSED, parse_time(deal.get("archive_time")) or updated
    return Item(
        ref=ItemRef(ItemKind.DEAL, str(deal["id"])),
        title=str(deal.get("title") or ""),
        person_ids=_person_ids(deal),
        created_at=created,
        status=status,
        closed_at=closed_at,
    )


def lead_item(lead: dict[str, Any]) -> Item | None:
    """A v1 lead: archived means closed. Leads carry no archive time, so an archived lead's
    `update_time` stands for it (an upper bound: editing it after archiving moves it later)."""
    created = parse_time(lead.get("add_time"))
    if created is None or not lead.get("id"):
        return None
    archived = bool(lead.get("is_archived"))
    closed_at = None
    if archived:
        closed_at = parse_time(lead.get("archive_time")) or parse_time(lead.get("update_time"))
    return Item(
        ref=ItemRef(ItemKind.LEAD, str(lead["id"])),
        title=str(lead.get("title") or ""),
        person_ids=_person_ids(lead),
        created_at=created,
        status=ItemStatus.CLOSED if archived else ItemStatus.OPEN,
        closed_at=closed_at,
    )


def project_item(project: dict[str, Any]) -> Item | None:
    """A v1 project: completed or canceled is closed, deleted is deleted (both at
    `status_change_time`); an archived open project is closed when archived."""
    created = parse_time(project.get("add_time"))
    if created is None or project.get("id") is None:
        return None
    status_text = str(project.get("status") or "open")
    changed = parse_time(project.get("status_change_time")) or parse_time(
        project.get("update_time")
    )
    archived = parse_time(project.get("archive_time"))
    status, closed_at = ItemStatus.OPEN, None
    if status_text == "deleted":
        status, closed_at = ItemStatus.DELETED, changed
    elif status_text != "open":
        status, closed_at = ItemStatus.CLOSED, changed
    elif archived is not None:
        status, closed_at = ItemStatus.CLOSED, archived
    return Item(
        ref=ItemRef(ItemKind.PROJECT, str(int(project["id"]))),
        title=str(project.get("title") or ""),
        person_ids=_person_ids(project),
        created_at=created,
        status=status,
        closed_at=closed_at,
    )
