"""The HubSpot account's records: objects of each type with string properties, the
associations between them, owners and pipelines, and their JSON in the v3 shapes.

HubSpot stores every property value as a string (datetimes as ISO 8601 in UTC, booleans as
"true"/"false") and answers null for a requested property that has no value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Object type name -> HubSpot's object type id (the v4 associations answer with the ids).
OBJECT_TYPE_IDS = {
    "contacts": "0-1",
    "companies": "0-2",
    "deals": "0-3",
    "emails": "0-49",
    "leads": "0-136",
}
_SINGULAR = {"contact": "contacts", "company": "companies", "deal": "deals", "email": "emails"}
_SINGULAR["lead"] = "leads"

# Properties a caller may write, per object type (HubSpot refuses unknown ones).
# HubSpot's own properties a caller may write, per object type (it refuses unknown ones).
WRITABLE = {
    "contacts": {"email", "firstname", "lastname", "hubspot_owner_id"},
    "companies": {"name", "domain", "hubspot_owner_id"},
    "deals": {"dealname", "dealstage", "pipeline", "closedate", "amount", "hubspot_owner_id"},
    "leads": {"hs_lead_name", "hs_pipeline", "hs_pipeline_stage", "hubspot_owner_id"},
    "emails": {
        "hs_timestamp",
        "hs_email_direction",
        "hs_email_subject",
        "hs_email_headers",
        "hs_email_status",
        "hs_email_text",
        "hs_email_html",
        "hubspot_owner_id",
    },
}
# Calculated by HubSpot: readable, refused in writes.
READ_ONLY = {
    # Secondary emails are set in HubSpot's UI (or its v1 secondary-email API), not here.
    "contacts": {"createdate", "lastmodifieddate", "hs_object_id", "hs_additional_emails"},
    # …and the id of the primary company, which HubSpot keeps from the primary association.
    "companies": {"createdate", "hs_lastmodifieddate", "hs_object_id"},
    "deals": {
        "createdate",
        "hs_lastmodifieddate",
        "hs_object_id",
        "hs_is_closed",
        "hs_is_closed_won",
        "hs_v2_date_entered_current_stage",
    },
    "leads": {"hs_createdate", "hs_lastmodifieddate", "hs_object_id"},
    "emails": {"hs_createdate", "hs_lastmodifieddate", "hs_object_id"},
}
READ_ONLY["leads"].add("hs_v2_date_entered_current_stage")
READ_ONLY["contacts"].add("associatedcompanyid")
# The ids of the contacts merged into this one ("1234;5678"), kept by HubSpot after a merge.
READ_ONLY["contacts"].add("hs_merged_object_ids")
# Properties whose values are unique in the account: usable as `idProperty` in batch reads.
UNIQUE_PROPERTIES = {"contacts": {"email"}}
# The custom property maillink's HubSpot integration keeps each email's key in (an account
# admin creates it, with unique values, through HubSpot's properties API or settings).
MAILLINK_KEY = "maillink_key"
# What a read answers when the caller names no properties (HubSpot's defaults).
DEFAULT_PROPERTIES = {
    "contacts": [
        "createdate",
        "email",
        "firstname",
        "hs_object_id",
        "lastmodifieddate",
        "lastname",
    ],
    "companies": ["createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"],
    "deals": [
        "amount",
        "closedate",
        "createdate",
        "dealname",
        "dealstage",
        "hs_lastmodifieddate",
        "hs_object_id",
        "pipeline",
    ],
    "leads": ["hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
    "emails": ["hs_createdate", "hs_lastmodifieddate", "hs_object_id", "hs_timestamp"],
}
EMAIL_DIRECTIONS = ("EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL")
EMAIL_STATUSES = ("BOUNCED", "FAILED", "SCHEDULED", "SENDING", "SENT")


def object_type(name: str) -> str | None:
    """ "contacts" for "contacts", "contact" or "0-1"; None for a type the sandbox has not."""
    lowered = name.lower()
    if lowered in OBJECT_TYPE_IDS:
        return lowered
    if lowered in _SINGULAR:
        return _SINGULAR[lowered]
    for type_name, type_id in OBJECT_TYPE_IDS.items():
        if type_id == lowered:
            return type_name
    return None


def created_property(type_name: str) -> str:
    return "hs_createdate" if type_name in ("emails", "leads") else "createdate"


def modified_property(type_name: str) -> str:
    return "lastmodifieddate" if type_name == "contacts" else "hs_lastmodifieddate"


def iso(when: datetime) -> str:
    """HubSpot's datetime string: UTC with milliseconds and Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime | None:
    """A datetime property or filter value: ISO 8601 or epoch milliseconds; None if neither."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class HubObject:
    """One record: a contact, company, deal, lead or email engagement."""

    type: str
    id: int
    properties: dict[str, str]
    created: datetime
    updated: datetime
    archived_at: datetime | None = None

    @property
    def archived(self) -> bool:
        return self.archived_at is not None

    def json(self, names: list[str] | None, known: set[str]) -> dict[str, Any]:
        """The SimplePublicObject: the named properties (null when unset) or the defaults."""
        wanted = list(DEFAULT_PROPERTIES[self.type]) if not names else list(names)
        for always in (created_property(self.type), modified_property(self.type), "hs_object_id"):
            if always not in wanted:
                wanted.append(always)
        body: dict[str, Any] = {
            "id": str(self.id),
            "properties": {n: self.properties.get(n) for n in wanted if n in known},
            "createdAt": iso(self.created),
            "updatedAt": iso(self.updated),
            "archived": self.archived,
        }
        if self.archived_at is not None:
            body["archivedAt"] = iso(self.archived_at)
        return body


@dataclass(frozen=True)
class Owner:
    id: int
    user_id: int
    email: str
    first_name: str
    last_name: str
    created: datetime
    archived: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "userId": self.user_id,
            "userIdIncludingInactive": self.user_id,
            "type": "PERSON",
            "createdAt": iso(self.created),
            "updatedAt": iso(self.created),
            "archived": self.archived,
            "teams": [],
        }


@dataclass
class Records:
    """Everything the account holds, behind one lock (views take it for a whole call)."""

    objects: dict[str, dict[int, HubObject]] = field(
        default_factory=lambda: {name: {} for name in OBJECT_TYPE_IDS}
    )
    # (from type, from id, to type, to id) -> association type ids, stored both ways.
    links: dict[tuple[str, int, str, int], set[int]] = field(default_factory=dict)
    owners: dict[int, Owner] = field(default_factory=dict)
    # Objects the search index has not caught up with yet (`HubSpotSandbox.search_lag`).
    unindexed: set[tuple[str, int]] = field(default_factory=set)
    search_lag: bool = False
    # Objects merged into another: (type, merged-away id) -> the id of the one that was kept.
    merged: dict[tuple[str, int], int] = field(default_factory=dict)
    # Custom properties the account defines: type -> name -> whether its values are unique.
    custom: dict[str, dict[str, bool]] = field(default_factory=dict)
    # Told of each change: (type, id, "creation" | "propertyChange" | "deletion", properties).
    on_change: Callable[[str, int, str, dict[str, str]], None] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    _next_id: int = 1001

    def next_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def clear(self) -> None:
        with self.lock:
            for table in self.objects.values():
                table.clear()
            self.links.clear()
            self.owners.clear()
            self.unindexed.clear()
            self.merged.clear()

    def changed(self, obj: HubObject, change: str, properties: dict[str, str]) -> None:
        if self.on_change is not None:
            self.on_change(obj.type, obj.id, change, properties)

    def writable(self, type_name: str) -> set[str]:
        return WRITABLE[type_name] | set(self.custom.get(type_name, {}))

    def known(self, type_name: str) -> set[str]:
        """Every property the type has in this account (HubSpot's and custom ones)."""
        return self.writable(type_name) | READ_ONLY[type_name]

    def unique(self, type_name: str) -> set[str]:
        custom = {n for n, unique in self.custom.get(type_name, {}).items() if unique}
        return UNIQUE_PROPERTIES.get(type_name, set()) | custom

    def get(self, type_name: str, object_id: int, *, archived: bool = False) -> HubObject | None:
        """The object, if it exists and is archived exactly when `archived` asks for it."""
        found = self.objects[type_name].get(object_id)
        if found is None or found.archived != archived:
            return None
        return found

    def survivor(self, type_name: str, object_id: int) -> HubObject | None:
        """The live object a merged-away id now answers as (HubSpot reads of a merged record's
        id return the record it was merged into), None when the id was never merged."""
        seen: set[int] = set()
        while (type_name, object_id) in self.merged and object_id not in seen:
            seen.add(object_id)
            object_id = self.merged[(type_name, object_id)]
        return self.get(type_name, object_id) if seen else None

    def find_unique(self, type_name: str, prop: str, value: str) -> HubObject | None:
        """The live object whose unique property `prop` equals `value` (emails: any case)."""
        wanted = value.strip().lower() if prop == "email" else value
        for obj in self.objects[type_name].values():
            have = obj.properties.get(prop)
            if have is None or obj.archived:
                continue
            if (have.lower() if prop == "email" else have) == wanted:
                return obj
        return None

    def associate(self, a: tuple[str, int], b: tuple[str, int], type_id: int, back: int) -> None:
        self.links.setdefault((a[0], a[1], b[0], b[1]), set()).add(type_id)
        self.links.setdefault((b[0], b[1], a[0], a[1]), set()).add(back)

    def dissociate(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        self.links.pop((a[0], a[1], b[0], b[1]), None)
        self.links.pop((b[0], b[1], a[0], a[1]), None)

    def associated(self, type_name: str, object_id: int, to_type: str) -> dict[int, set[int]]:
        """Live objects of `to_type` associated with the object: their ids -> type ids."""
        found = {}
        for (from_type, from_id, other_type, other_id), types in self.links.items():
            if (from_type, from_id, other_type) != (type_name, object_id, to_type):
                continue
            other = self.objects[to_type].get(other_id)
            if other is not None and not other.archived:
                found[other_id] = set(types)
        return dict(sorted(found.items()))
