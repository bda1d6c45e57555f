"""The Outlook mailboxes of the Microsoft sandbox, and the state behind Graph's message delta.

A mailbox keeps its messages (Graph property names, values as Graph serializes them) and a
change log: every add, update, move and delete is an event with a sequence number, in the folder
it concerns. A delta round is computed from that log the way the Graph docs describe it
(delta-query-messages, delta-query-overview): an initial round lists the folder's messages (a
filtered one at most `filtered_cap` of them), a later round the items added (full), updated
(only the changed properties) and removed (``@removed`` with a reason) since the round's
deltatoken. State tokens are opaque and held here; expiring a folder makes its tokens answer 410.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any
from urllib.parse import quote

WELL_KNOWN_FOLDERS = ("inbox", "sentitems", "drafts", "deleteditems", "archive", "junkemail")

# Properties a Mail.ReadBasic token may not read (permissions reference: "except body,
# previewBody, attachments and any extended properties").
BASIC_FORBIDDEN = frozenset({"body", "bodyPreview", "uniqueBody"})

_IMMUTABLE_PREFIX = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A"
_REGULAR_PREFIX = "AAMkAGVmMDEzMTM4LTZmYWUtNDdkNC1hMDZiLTU1OGY5OTZhYmY4OABGAAAAAAAiQ8W967B7"


def iso(when: datetime) -> str:
    """A DateTimeOffset as Graph writes it: UTC, seconds, a Z."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def folder_id(mailbox_key: str, name: str) -> str:
    digest = hashlib.sha256(f"{mailbox_key}/{name}".encode()).digest()[:24]
    return "AAMkAD" + _b64(digest)


@dataclass
class StoredMessage:
    id: str  # immutable id
    folder: str
    props: dict[str, Any]
    version: int = 1
    deleted: bool = False

    def regular_id(self) -> str:
        """The default (mutable) id: it changes when the message moves, as in Exchange."""
        digest = hashlib.sha256(f"{self.id}/{self.folder}".encode()).digest()[:30]
        return _REGULAR_PREFIX + _b64(digest)


@dataclass(frozen=True)
class Event:
    seq: int
    message_id: str
    folder: str
    kind: str  # add | update | remove
    changed: frozenset[str] = frozenset()
    reason: str = ""  # for remove: deleted | changed


@dataclass(frozen=True)
class Entry:
    """One item of a delta page: a full message, a partial update, or a removal."""

    kind: str  # full | partial | removed
    message_id: str
    changed: frozenset[str] = frozenset()
    reason: str = ""


@dataclass(frozen=True)
class Since:
    op: str  # ge | gt
    when: datetime

    def admits(self, received: datetime) -> bool:
        return received >= self.when if self.op == "ge" else received > self.when


@dataclass
class DeltaRound:
    mailbox: str
    folder: str
    generation: int
    select: tuple[str, ...] | None
    since: Since | None
    entries: list[Entry]
    end_seq: int


@dataclass(frozen=True)
class DeltaState:
    """What a deltatoken stands for: the folder's state at `seq`, with the round's options."""

    mailbox: str
    folder: str
    generation: int
    seq: int
    select: tuple[str, ...] | None
    since: Since | None


class TokenExpired(Exception):
    """The state token is unknown or its folder was reset: Graph answers 410."""


@dataclass
class Mailbox:
    key: str
    email: str
    display_name: str
    user_id: str
    folders: dict[str, str] = field(default_factory=dict)  # name → folder id
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    seq: int = 0
    generations: dict[str, int] = field(default_factory=dict)
    replay: set[str] = field(default_factory=set)  # folders whose next page repeats the last
    last_page: dict[str, list[Entry]] = field(default_factory=dict)
    conversation_sizes: dict[str, int] = field(default_factory=dict)
    # False: a user with a `mail` address but no Exchange Online mailbox (no licence, or hosted
    # on-premises): Graph's mail endpoints answer 404 MailboxNotEnabledForRESTAPI.
    exchange: bool = True

    def __post_init__(self) -> None:
        for name in WELL_KNOWN_FOLDERS:
            self.folders[name] = folder_id(self.key, name)

    # --- folders -------------------------------------------------------------------------

    def folder_name(self, ref: str) -> str | None:
        """The folder named or identified by `ref` (well-known names are case-insensitive)."""
        if ref.lower() in self.folders:
            return ref.lower()
        for name, fid in self.folders.items():
            if fid == ref:
                return name
        return None

    def add_folder(self, name: str) -> str:
        key = name.lower()
        if key not in self.folders:
            self.folders[key] = folder_id(self.key, key)
        return self.folders[key]

    # --- changes -------------------------------------------------------------------------

    def _log(self, message: StoredMessage, kind: str, **extra: Any) -> None:
        self.seq += 1
        self.events.append(Event(self.seq, message.id, message.folder, kind, **extra))

    def add(self, message: StoredMessage) -> None:
        self.messages[message.id] = message
        self._log(message, "add")

    def update(self, message_id: str, changes: dict[str, Any], modified: datetime) -> None:
        message = self.live(message_id)
        message.props.update(changes)
        message.props["lastModifiedDateTime"] = iso(modified)
        message.version += 1
        message.props["changeKey"] = f"CQAAABYAAA{message.version:08d}"
        self._log(message, "update", changed=frozenset(changes) | {"lastModifiedDateTime"})

    def move(self, message_id: str, folder: str) -> None:
        message = self.live(message_id)
        if folder == message.folder:
            return
        self._log(message, "remove", reason="changed")
        message.folder = folder
        message.props["parentFolderId"] = self.folders[folder]
        message.version += 1
        self._log(message, "add")

    def delete(self, message_id: str) -> None:
        message = self.live(message_id)
        self._log(message, "remove", reason="deleted")
        message.deleted = True

    def live(self, message_id: str) -> StoredMessage:
        message = self.messages.get(message_id)
        if message is None or message.deleted:
            raise KeyError(f"no message {message_id} in {self.email}")
        return message

    def find(self, ref: str) -> StoredMessage | None:
        """A live message by its immutable or its current regular id."""
        message = self.messages.get(ref)
        if message is not None and not message.deleted:
            return message
        for candidate in self.messages.values():
            if not candidate.deleted and candidate.regular_id() == ref:
                return candidate
        return None

    def in_folder(self, folder: str) -> list[StoredMessage]:
        return [m for m in self.messages.values() if m.folder == folder and not m.deleted]

    # --- delta ---------------------------------------------------------------------------

    def expire(self, folder: str) -> None:
        self.generations[folder] = self.generations.get(folder, 0) + 1

    def generation(self, folder: str) -> int:
        return self.generations.get(folder, 0)

    def initial_round(
        self, folder: str, select: tuple[str, ...] | None, since: Since | None, cap: int
    ) -> DeltaRound:
        messages = self.in_folder(folder)
        if since is not None:
            messages = [m for m in messages if since.admits(parse_iso(m.props["receivedDateTime"]))]
            # "Applying $filter in a delta query returns only up to 5,000 messages."
            messages.sort(key=lambda m: m.props["receivedDateTime"], reverse=True)
            messages = messages[:cap]
        entries = [Entry("full", m.id) for m in messages]
        return DeltaRound(
            self.key, folder, self.generation(folder), select, since, entries, self.seq
        )

    def next_round(self, state: DeltaState) -> DeltaRound:
        if state.generation != self.generation(state.folder):
            raise TokenExpired(state.folder)
        by_message: dict[str, list[Event]] = {}
        for event in self.events[state.seq :]:  # events[i].seq == i + 1
            if event.folder == state.folder:
                by_message.setdefault(event.message_id, []).append(event)
        entries: list[Entry] = []
        for message_id, events in by_message.items():
            message = self.messages[message_id]
            was_in = events[0].kind != "add"
            now_in = message.folder == state.folder and not message.deleted
            came_back = any(e.kind == "add" for e in events)
            if now_in and (came_back or not was_in):
                entry = Entry("full", message_id)
            elif now_in:
                changed = frozenset().union(*(e.changed for e in events))
                entry = Entry("partial", message_id, changed)
            elif was_in:
                reason = "deleted" if message.deleted else "changed"
                entry = Entry("removed", message_id, reason=reason)
            else:
                continue  # arrived and left between the two rounds
            if (
                entry.kind != "removed"
                and state.since is not None
                and not state.since.admits(parse_iso(message.props["receivedDateTime"]))
            ):
                continue
            entries.append(entry)
        return DeltaRound(
            self.key,
            state.folder,
            state.generation,
            state.select,
            state.since,
            entries,
            self.seq,
        )

    def next_conversation_index(self, conversation_id: str, sent: datetime) -> str:
        """An Outlook-like conversationIndex: a 22-byte header, then 5 bytes per reply."""
        count = self.conversation_sizes.get(conversation_id, 0)
        self.conversation_sizes[conversation_id] = count + 1
        filetime = int((sent.timestamp() + 11_644_473_600) * 10_000_000)
        header = b"\x01" + (filetime >> 16).to_bytes(8, "big")[3:] + _guid(conversation_id)
        return base64.b64encode(header + b"\x00\x00\x00\x00\x10" * count).decode("ascii")


Recipient = str | tuple[str, str]


def recipient(value: Recipient) -> dict[str, Any]:
    """A Graph recipient from "addr", "Name <addr>" or (name, addr)."""
    name, address = value if isinstance(value, tuple) else parseaddr(value)
    return {"emailAddress": {"name": name or address, "address": address}}


def message_props(
    message_id: str,
    *,
    folder_id: str,
    conversation_id: str,
    conversation_index: str,
    internet_message_id: str | None,
    subject: str,
    sender: dict[str, Any] | None,
    to: list[dict[str, Any]],
    cc: list[dict[str, Any]],
    bcc: list[dict[str, Any]],
    received: datetime,
    sent: datetime,
    is_read: bool,
    is_draft: bool,
    headers: Sequence[tuple[str, str]] | None,
) -> dict[str, Any]:
    """Every property of the v1.0 message resource, as Exchange would set them on delivery."""
    return {
        "createdDateTime": iso(received),
        "lastModifiedDateTime": iso(received),
        "changeKey": "CQAAABYAAA00000001",
        "categories": [],
        "receivedDateTime": iso(received),
        "sentDateTime": iso(sent),
        "hasAttachments": False,
        "internetMessageId": internet_message_id,
        "subject": subject,
        "bodyPreview": "",
        "importance": "normal",
        "parentFolderId": folder_id,
        "conversationId": conversation_id,
        "conversationIndex": conversation_index,
        "isDeliveryReceiptRequested": False,
        "isReadReceiptRequested": False,
        "isRead": is_read,
        "isDraft": is_draft,
        "webLink": (
            "https://outlook.office365.com/owa/?ItemID="
            f"{quote(message_id, safe='')}&exvsurl=1&viewmodel=ReadMessageItem"
        ),
        "inferenceClassification": "focused",
        "body": {"contentType": "html", "content": ""},
        "uniqueBody": {"contentType": "html", "content": ""},
        "sender": sender,
        "from": sender,
        "toRecipients": to,
        "ccRecipients": cc,
        "bccRecipients": bcc,
        "replyTo": [],
        "flag": {"flagStatus": "notFlagged"},
        "internetMessageHeaders": (
            None if headers is None else [{"name": n, "value": v} for n, v in headers]
        ),
    }


def _guid(conversation_id: str) -> bytes:
    return hashlib.md5(conversation_id.encode(), usedforsecurity=False).digest()


class DeltaTokens:
    """The opaque $skiptoken / $deltatoken values handed out, and what each stands for."""

    def __init__(self) -> None:
        self._pages: dict[str, tuple[DeltaRound, int]] = {}
        self._deltas: dict[str, DeltaState] = {}

    def skip(self, round_: DeltaRound, offset: int) -> str:
        token = secrets.token_urlsafe(18)
        self._pages[token] = (round_, offset)
        return token

    def delta(self, round_: DeltaRound) -> str:
        token = secrets.token_urlsafe(18)
        self._deltas[token] = DeltaState(
            round_.mailbox,
            round_.folder,
            round_.generation,
            round_.end_seq,
            round_.select,
            round_.since,
        )
        return token

    def page(self, token: str) -> tuple[DeltaRound, int]:
        try:
            return self._pages[token]
        except KeyError:
            raise TokenExpired(token) from None

    def state(self, token: str) -> DeltaState:
        try:
            return self._deltas[token]
        except KeyError:
            raise TokenExpired(token) from None


def new_ids(seed: str) -> Callable[[], str]:
    """Immutable ids that look like Exchange's (base64url, ending in '=')."""
    counter = itertools.count(1)

    def make() -> str:
        digest = hashlib.sha256(f"{seed}/{next(counter)}".encode()).digest()[:30]
        return _IMMUTABLE_PREFIX + _b64(digest)

    return make


def new_conversation_id(seed: str) -> str:
    return "AAQkAD" + _b64(hashlib.sha256(seed.encode()).digest()[:30])
