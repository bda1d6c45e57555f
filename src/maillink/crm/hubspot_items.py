"""HubSpot records as the linking rules see them, and an email draft as an email engagement.

Pure functions, no I/O. HubSpot keeps every property as a string: datetimes as ISO 8601 (or
epoch milliseconds in some answers), booleans as "true"/"false"; ids are numeric strings.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from maillink.crm.base import ActivityDraft
from maillink.model import (
    Address,
    CrmUser,
    Direction,
    Item,
    ItemKind,
    ItemRef,
    ItemStatus,
    Person,
)

# `associatedcompanyid`: the primary company, which the email is associated with too.
CONTACT_PROPERTIES = [
    "email",
    "firstname",
    "lastname",
    "hs_additional_emails",
    "associatedcompanyid",
]
DEAL_PROPERTIES = [
    "dealname",
    "createdate",
    "closedate",
    "hs_is_closed",
    "hs_is_closed_won",
    "dealstage",
    "pipeline",
    "hs_v2_date_entered_current_stage",
]
LEAD_PROPERTIES = [
    "hs_lead_name",
    "hs_createdate",
    "hs_pipeline",
    "hs_pipeline_stage",
    "hs_v2_date_entered_current_stage",
]
OUTGOING, INCOMING = "EMAIL", "INCOMING_EMAIL"  # hs_email_direction
# HubSpot-defined association type ids, from an email to each kind of record.
EMAIL_TO = {"contacts": 198, "deals": 210, "leads": 599, "companies": 186}
_ITEM_TYPES = {ItemKind.DEAL: "deals", ItemKind.LEAD: "leads"}

_LINE_BREAK = re.compile(r"<br\s*/?>|</p>|</div>|\n", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")


def parse_time(value: Any) -> datetime | None:
    """A HubSpot datetime (ISO 8601 or epoch milliseconds) as aware UTC; None if unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def hubspot_time(when: datetime) -> str:
    """UTC ISO 8601 with milliseconds, as HubSpot writes them (naive datetimes are UTC)."""
    when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def numeric_id(value: Any) -> int | None:
    text = str(value) if isinstance(value, str | int) else ""
    return int(text) if text.isdigit() else None


def contact_emails(properties: Mapping[str, Any]) -> tuple[str, ...]:
    """The contact's primary address, then its secondary ones (`hs_additional_emails`)."""
    found = [str(properties.get("email") or "")]
    found += str(properties.get("hs_additional_emails") or "").split(";")
    cleaned = (e.strip().lower() for e in found)
    return tuple(dict.fromkeys(e for e in cleaned if e))


def person_from_contact(record: Mapping[str, Any]) -> Person | None:
    contact_id = numeric_id(record.get("id"))
    if contact_id is None or record.get("archived"):
        return None
    properties = record.get("properties") or {}
    emails = contact_emails(properties)
    name = " ".join(str(properties.get(p) or "").strip() for p in ("firstname", "lastname")).strip()
    company = numeric_id(properties.get("associatedcompanyid"))
    return Person(
        id=contact_id,
        name=name or (emails[0] if emails else ""),
        emails=emails,
        organization_id=str(company) if company is not None else None,
    )


def deal_item(record: Mapping[str, Any], person_ids: Iterable[int]) -> Item | None:
    """A deal: open unless `hs_is_closed`; then won or lost, closed at `closedate` (else when it
    entered its closed stage). Archived deals are not items (never candidates)."""
    deal_id = numeric_id(record.get("id"))
    properties = record.get("properties") or {}
    created = parse_time(properties.get("createdate")) or parse_time(record.get("createdAt"))
    if deal_id is None or created is None or record.get("archived"):
        return None
    status, closed_at = ItemStatus.OPEN, None
    if properties.get("hs_is_closed") == "true":
        won = properties.get("hs_is_closed_won") == "true"
        status = ItemStatus.WON if won else ItemStatus.LOST
        closed_at = parse_time(properties.get("closedate")) or parse_time(
            properties.get("hs_v2_date_entered_current_stage")
        )
    return Item(
        ref=ItemRef(ItemKind.DEAL, str(deal_id)),
        title=str(properties.get("dealname") or f"Deal {deal_id}"),
        person_ids=frozenset(person_ids),
        created_at=created,
        status=status,
        closed_at=closed_at,
    )


def lead_item(
    record: Mapping[str, Any], person_ids: Iterable[int], closed_stages: frozenset[str]
) -> Item | None:
    """A lead: open until its stage is a closed one of its pipeline (qualified, disqualified),
    then CLOSED since it entered that stage."""
    lead_id = numeric_id(record.get("id"))
    properties = record.get("properties") or {}
    created = parse_time(properties.get("hs_createdate")) or parse_time(record.get("createdAt"))
    if lead_id is None or created is None or record.get("archived"):
        return None
    closed = str(properties.get("hs_pipeline_stage") or "") in closed_stages
    return Item(
        ref=ItemRef(ItemKind.LEAD, str(lead_id)),
        title=str(properties.get("hs_lead_name") or f"Lead {lead_id}"),
        person_ids=frozenset(person_ids),
        created_at=created,
        status=ItemStatus.CLOSED if closed else ItemStatus.OPEN,
        closed_at=(
            parse_time(properties.get("hs_v2_date_entered_current_stage")) if closed else None
        ),
    )


def closed_stages(pipelines: Any) -> frozenset[str]:
    """The ids of the closed stages (`metadata.isClosed`) of GET /crm/v3/pipelines/{type}."""
    found = set()
    for pipeline in (pipelines or {}).get("results") or ():
        for stage in pipeline.get("stages") or ():
            metadata = stage.get("metadata") or {}
            if str(metadata.get("isClosed", "")).lower() == "true":
                found.add(str(stage.get("id")))
    return frozenset(found)


def owner_user(record: Mapping[str, Any]) -> CrmUser | None:
    """An owner of GET /crm/v3/owners as a CRM user (its owner id: what records name)."""
    owner_id, email = record.get("id"), record.get("email")
    if not isinstance(owner_id, str | int) or not isinstance(email, str) or not email:
        return None
    name = f"{record.get('firstName') or ''} {record.get('lastName') or ''}".strip()
    return CrmUser(id=str(owner_id), email=email.lower(), name=name)


# -- the email engagement -------------------------------------------------------------------------


def note_lines(note: str) -> dict[str, str]:
    """The note's `Label: value` lines (tags dropped, entities decoded), by lower-case label."""
    lines: dict[str, str] = {}
    for line in _LINE_BREAK.split(note):
        label, sep, value = html.unescape(_TAG.sub("", line)).partition(":")
        if sep and label.strip() and label.strip().lower() not in lines:
            lines[label.strip().lower()] = value.strip()
    return lines


def _addresses(text: str) -> list[dict[str, str]]:
    found = []
    for name, address in getaddresses([text]):
        if "@" not in address:
            continue
        entry = {"email": address.lower()}
        first, _, last = name.strip().partition(" ")
        if first:
            entry["firstName"] = first
        if last:
            entry["lastName"] = last
        found.append(entry)
    return found


def _header(address: Address) -> dict[str, str]:
    entry = {"email": address.email}
    first, _, last = address.name.strip().partition(" ")
    if first:
        entry["firstName"] = first
    if last:
        entry["lastName"] = last
    return entry


def _draft_headers(draft: ActivityDraft) -> tuple[str, dict[str, Any]]:
    """The direction and From/To/Cc headers: the draft's own fields; drafts stored before
    they existed (direction None) are read back from their note, where maillink wrote them."""
    if draft.direction is not None:
        inbound = draft.direction is Direction.INBOUND
        sender = _header(draft.sender) if draft.sender else {}
        to = [_header(a) for a in draft.to]
        cc = [_header(a) for a in draft.cc]
    else:
        lines = note_lines(draft.note)
        inbound = lines.get("direction", "").lower() == "inbound"
        senders = _addresses(lines.get("from", ""))
        sender = senders[0] if senders else {}
        to, cc = _addresses(lines.get("to", "")), _addresses(lines.get("cc", ""))
    headers = {"from": sender, "to": to, "cc": cc, "bcc": []}
    return (INCOMING if inbound else OUTGOING), headers


def email_properties(draft: ActivityDraft, key_property: str | None) -> dict[str, str]:
    """The engagement's properties: when, direction, subject and the From/To/Cc headers, its
    key; never a body."""
    direction, headers = _draft_headers(draft)
    properties = {
        "hs_timestamp": hubspot_time(draft.when),
        "hs_email_direction": direction,
        "hs_email_subject": draft.subject,
        "hs_email_headers": json.dumps(headers),
    }
    if key_property:
        properties[key_property] = draft.key
    if draft.owner_id is not None and draft.owner_id.isdigit():
        properties["hubspot_owner_id"] = draft.owner_id
    return properties


def email_targets(draft: ActivityDraft) -> list[tuple[str, int]]:
    """(HubSpot type, id) of everything the email is associated with: its contacts, its deal
    or lead, and the primary contact's company."""
    targets = [("contacts", pid) for pid in dict.fromkeys(draft.person_ids)]
    for ref in draft.items:
        item_id = numeric_id(ref.id)
        if ref.kind in _ITEM_TYPES and item_id is not None:
            targets.append((_ITEM_TYPES[ref.kind], item_id))
    company = numeric_id(draft.organization_id) if draft.organization_id else None
    if company is not None:
        targets.append(("companies", company))
    return targets


def email_input(draft: ActivityDraft, key_property: str | None) -> dict[str, Any]:
    """One input of `POST /crm/v3/objects/emails/batch/create`: the properties and the inline
    associations."""
    return {
        "properties": email_properties(draft, key_property),
        "associations": [
            {"to": {"id": str(to_id)}, "types": [association_type(to_type)]}
            for to_type, to_id in email_targets(draft)
        ],
    }


def association_type(to_type: str) -> dict[str, Any]:
    """The HubSpot-defined association of an email with a record of `to_type`."""
    return {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": EMAIL_TO[to_type]}
