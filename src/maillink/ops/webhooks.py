"""What the pushed notifications mean: Pipedrive webhooks (v2) and Gmail Pub/Sub pushes.

A Pipedrive change (a deal won, lost, deleted; a lead converted or archived; a person's addresses
edited) makes the cached facts of the persons concerned stale: they are forgotten, so the next
message of any of their threads is decided on fresh facts (rule 6). A Gmail push only says that a
mailbox changed: it makes the mailbox due now; the history cursor stays the truth.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from maillink.crm.base import CrmChange
from maillink.store import cache, mirror

# Entities whose changes move items (rules 2 and 6), and persons (who has which address).
ITEM_ENTITIES = frozenset({"deal", "lead", "project"})
PERSON_ENTITY = "person"
DELETE_ACTIONS = frozenset({"delete", "deleted"})  # webhooks v2 say "delete"


MAX_JSON_DEPTH = 32  # Pipedrive's and Pub/Sub's payloads nest a few levels; a deeper one is junk


class BadPayload(ValueError):
    """The body is not the notification it claims to be; the message says what is wrong."""


def _depth(text: str) -> int:
    """How deep the arrays and objects of this JSON text nest (brackets inside strings skipped);
    one pass, whatever the text."""
    deepest = depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(body: bytes) -> Any:
    """The JSON value of `body`; `BadPayload` when it is not UTF-8 JSON or nests too deep (which
    would otherwise exhaust the parser's recursion)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadPayload("the body is not UTF-8 text") from None
    if _depth(text) > MAX_JSON_DEPTH:
        raise BadPayload(f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadPayload("the body is not valid JSON") from None


def _object(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadPayload(f"{where} must be an object or null")
    return value


def _person_id(value: Any) -> int | None:
    if isinstance(value, dict):  # v1-style {"value": 3, "name": …}
        value = value.get("value")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _emails(value: Any) -> set[str]:
    found: set[str] = set()
    for entry in value if isinstance(value, list) else []:
        address = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(address, str) and "@" in address:
            found.add(address.strip().lower())
    return found


def pipedrive_change(payload: Any) -> CrmChange | None:
    """The cache entries a Pipedrive v2 webhook makes stale; None for an entity that does not
    concern linking (activities, notes, organizations…). `BadPayload` if it is not a v2 event."""
    if not isinstance(payload, dict):
        raise BadPayload("the body must be a JSON object")
    meta = _object(payload.get("meta"), "meta")
    if meta is None:
        raise BadPayload("meta is missing (is this a Pipedrive webhook v2?)")
    entity, action = meta.get("entity"), meta.get("action")
    if not isinstance(entity, str) or not isinstance(action, str):
        raise BadPayload("meta.entity and meta.action must be strings (Pipedrive webhooks v2)")
    data = _object(payload.get("data"), "data")
    previous = _object(payload.get("previous"), "previous")
    raw_id = meta.get("entity_id")
    entity_id = str(raw_id) if isinstance(raw_id, int | str) and raw_id != "" else None
    states = [s for s in (data, previous) if s is not None]
    if entity in ITEM_ENTITIES:
        persons = {p for s in states if (p := _person_id(s.get("person_id"))) is not None}
        return CrmChange(
            entity, action, entity_id, frozenset(persons), frozenset(), everyone=not persons
        )
    if entity == PERSON_ENTITY:
        persons = {p for s in states if (p := _person_id(s.get("id"))) is not None}
        if entity_id is not None and entity_id.isdigit():
            persons.add(int(entity_id))
        emails = {e for s in states for e in _emails(s.get("emails") or s.get("email"))}
        return CrmChange(entity, action, entity_id, frozenset(persons), frozenset(emails))
    return None


def forget(conn: Connection, change: CrmChange, now: datetime | None = None) -> None:
    """Drop the cache entries `change` made stale. The CRM mirror does not answer for what it
    names until a refresh has read it again; a deleted person leaves the mirror at once (CRM
    listings do not show deleted persons)."""
    now = now or datetime.now(UTC)
    mirror.mark_stale(
        conn,
        now,
        person_ids=change.person_ids,
        emails=change.emails,
        everything=change.everyone,
    )
    if change.entity == PERSON_ENTITY and change.action in DELETE_ACTIONS:
        mirror.drop_persons(conn, change.person_ids)
    if change.everyone:
        cache.forget_all(conn)
        return
    cache.forget(conn, emails=change.emails, person_ids=change.person_ids)


@dataclass(frozen=True)
class GmailPush:
    email: str
    history_id: str | None
    message_id: str | None = None  # Pub/Sub's id of the message: the same one again is a replay


def gmail_push(envelope: Any) -> GmailPush:
    """The mailbox a Pub/Sub push names: `message.data` is base64 JSON {emailAddress, historyId}."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), dict):
        raise BadPayload("the body must be a Pub/Sub push envelope with a message")
    message_id = envelope["message"].get("messageId") or envelope["message"].get("message_id")
    data = envelope["message"].get("data")
    if not isinstance(data, str) or not data:
        raise BadPayload("message.data is missing")
    padded = data + "=" * (-len(data) % 4)
    decoded: Any = None
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            decoded = parse_json(decode(padded))
            break
        except (binascii.Error, ValueError):  # BadPayload is a ValueError
            continue
    else:
        raise BadPayload("message.data is not base64 JSON")
    if not isinstance(decoded, dict) or not isinstance(decoded.get("emailAddress"), str):
        raise BadPayload("message.data has no emailAddress")
    history = decoded.get("historyId")
    history_id = str(history).strip() if isinstance(history, int | str) else None
    if history_id is not None and not history_id.isdigit():
        raise BadPayload("message.data has a historyId that is not a number")
    return GmailPush(
        email=decoded["emailAddress"].strip().lower(),
        history_id=history_id,
        message_id=str(message_id)[:200] if isinstance(message_id, str | int) else None,
    )


def stale_push(history_id: str | None, cursor_history_id: str | None) -> bool:
    """A push whose historyId is not newer than the mailbox's stored cursor: its change has
    been synced already (or it is a replay)."""
    if history_id is None or cursor_history_id is None:
        return False
    return int(history_id) <= int(cursor_history_id)


class RecentIds:
    """The last `size` ids seen (Pub/Sub message ids), to tell a replay; thread-safe."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._ids

    def add(self, key: str) -> None:
        with self._lock:
            self._ids[key] = None
            self._ids.move_to_end(key)
            while len(self._ids) > self._size:
                self._ids.popitem(last=False)
