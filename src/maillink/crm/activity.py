"""What one email becomes in the CRM: an activity draft with a note that carries its maillink-id."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from maillink.crm.base import ActivityDraft
from maillink.model import Address, Direction, ItemRef, Message

KEY_PREFIX = "maillink-id: "


def key_line(key: str) -> str:
    """The note's last line, by which an activity is found again after a crash."""
    return KEY_PREFIX + html.escape(key, quote=False)


def _addresses(addresses: tuple[Address, ...]) -> str:
    return ", ".join(
        html.escape(f"{a.name} <{a.email}>" if a.name else a.email, quote=False) for a in addresses
    )


def render_note(message: Message) -> str:
    lines = []
    if message.sender:
        lines.append(f"<b>From:</b> {_addresses((message.sender,))}")
    if message.to:
        lines.append(f"<b>To:</b> {_addresses(message.to)}")
    if message.cc:
        lines.append(f"<b>Cc:</b> {_addresses(message.cc)}")
    date = message.date_header or (message.date.isoformat() if message.date else "")
    if date:
        lines.append(f"<b>Date:</b> {html.escape(date, quote=False)}")
    lines.append(f"<b>Direction:</b> {message.direction.value}")
    if message.snippet:
        lines.append(f"<b>Snippet:</b> {html.escape(message.snippet, quote=False)}")
    return "<br>\n".join(lines) + "<br>\n" + key_line(message.key)


def one_item_per_kind(items: tuple[ItemRef, ...]) -> tuple[ItemRef, ...]:
    """An activity holds at most one deal, one lead and one project: keep the first of each."""
    kept: dict[str, ItemRef] = {}
    for ref in items:
        kept.setdefault(ref.kind.value, ref)
    return tuple(kept.values())


def draft_for(
    message: Message,
    person_ids: tuple[int, ...],
    items: tuple[ItemRef, ...],
    *,
    owner_id: str | None = None,
    organization_id: str | None = None,
) -> ActivityDraft:
    """The activity of `message`, linked to `person_ids` (the primary first), `items` and the
    primary person's organization, owned by the CRM user `owner_id` (None: the CRM's default)."""
    assert message.date is not None  # decisions that write an activity have a date
    return ActivityDraft(
        key=message.key,
        subject=message.subject or "(no subject)",
        when=message.date,
        person_ids=person_ids,
        items=one_item_per_kind(items),
        note=render_note(message),
        owner_id=owner_id,
        organization_id=organization_id,
        direction=message.direction,
        sender=message.sender,
        to=message.to,
        cc=message.cc,
    )


def _address_json(address: Address) -> dict[str, str]:
    return {"email": address.email, "name": address.name}


def _address_from_json(data: dict[str, Any]) -> Address:
    return Address(str(data["email"]), str(data.get("name") or ""))


def draft_to_json(draft: ActivityDraft) -> dict[str, Any]:
    """The draft as the outbox stores it (`draft_from_json` reads it back)."""
    return {
        "key": draft.key,
        "subject": draft.subject,
        "when": draft.when.isoformat(),
        "person_ids": list(draft.person_ids),
        "items": [str(ref) for ref in draft.items],
        "note": draft.note,
        "owner_id": draft.owner_id,
        "organization_id": draft.organization_id,
        "direction": draft.direction.value if draft.direction else None,
        "sender": _address_json(draft.sender) if draft.sender else None,
        "to": [_address_json(a) for a in draft.to],
        "cc": [_address_json(a) for a in draft.cc],
    }


def draft_from_json(data: dict[str, Any]) -> ActivityDraft:
    return ActivityDraft(
        key=data["key"],
        subject=data["subject"],
        when=datetime.fromisoformat(data["when"]),
        person_ids=tuple(data["person_ids"]),
        items=tuple(ItemRef.parse(ref) for ref in data["items"]),
        note=data["note"],
        owner_id=data.get("owner_id"),
        organization_id=data.get("organization_id"),
        # drafts stored before these fields existed have none of them
        direction=Direction(data["direction"]) if data.get("direction") else None,
        sender=_address_from_json(data["sender"]) if data.get("sender") else None,
        to=tuple(_address_from_json(a) for a in data.get("to") or ()),
        cc=tuple(_address_from_json(a) for a in data.get("cc") or ()),
    )
