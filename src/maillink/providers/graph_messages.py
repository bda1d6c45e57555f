"""Graph message items (headers only, Mail.ReadBasic) → `model.Message`, with headers.py's rules.

Addresses go through `normalize_email` (lower case, IDN domains in punycode) and display names
through `clean_text`, so an address reads the same from Gmail and from Graph; the
internetMessageId goes through `normalize_message_id` (no angle brackets), so the same email
has the same key in both. Mail.ReadBasic gives no body and no bodyPreview: the snippet is empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from maillink.model import Address, Direction, Message
from maillink.providers.headers import (
    BAD_ADDRESS,
    BAD_DATE,
    NO_FROM,
    clean_text,
    normalize_email,
    normalize_message_id,
    parse_references,
)

# The header fields read from each message. Every message request carries a $select: the default
# property set includes the body, which Mail.ReadBasic may not read.
HEADER_FIELDS = (
    "conversationId",
    "internetMessageId",
    "subject",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "receivedDateTime",
    "sentDateTime",
    "isDraft",
)
# internetMessageHeaders (In-Reply-To, References) is selectable under Mail.ReadBasic but is
# returned only on $select, is large (every Received line) and is missing on Sent Items.
REPLY_HEADER_FIELD = "internetMessageHeaders"
# What a thread-date lookup reads of each message of a conversation.
DATE_FIELDS = ("conversationId", "receivedDateTime", "sentDateTime", "isDraft", "from")
SENT_FOLDER = "sentitems"


def parse_graph_date(value: Any) -> datetime | None:
    """A Graph DateTimeOffset ("2024-03-01T09:00:00Z") as an aware UTC datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def is_partial(item: Mapping[str, Any], fields: Sequence[str]) -> bool:
    """A delta update may carry only the changed properties: any selected one missing."""
    return any(name not in item for name in fields)


def own_addresses(account: str, aliases: Iterable[str]) -> frozenset[str]:
    return frozenset(e for e in (normalize_email(a) for a in (account, *aliases)) if e)


def _address(value: Any, problems: list[str]) -> Address | None:
    if not isinstance(value, Mapping):
        return None
    inner = value.get("emailAddress")
    if not isinstance(inner, Mapping):
        return None
    raw = str(inner.get("address") or "")
    name = clean_text(str(inner.get("name") or ""))
    email = normalize_email(raw) if raw else None
    if email is None:
        if raw or name:
            problems.append(BAD_ADDRESS)
        return None
    return Address(email, "" if name.lower() == email else name)


def _addresses(values: Any, problems: list[str]) -> tuple[Address, ...]:
    found: dict[str, Address] = {}
    for value in values or ():
        address = _address(value, problems)
        if address is not None and address.email not in found:
            found[address.email] = address
    return tuple(found.values())


def exchange_date(
    item: Mapping[str, Any], outbound: bool, problems: list[str] | None = None
) -> datetime | None:
    """When the email was exchanged: sent for outbound mail, received for inbound."""
    received = parse_graph_date(item.get("receivedDateTime"))
    sent = parse_graph_date(item.get("sentDateTime"))
    date = (sent or received) if outbound else (received or sent)
    if (
        date is None
        and problems is not None
        and (item.get("receivedDateTime") or item.get("sentDateTime"))
    ):
        problems.append(BAD_DATE)
    return date


def sender_is_own(item: Mapping[str, Any], own: frozenset[str]) -> bool:
    sender = _address(item.get("from"), [])
    return sender is not None and sender.email in own


def message_from_graph(
    account: str, own: frozenset[str], item: Mapping[str, Any], *, folder: str, thread_key: str
) -> Message:
    """A full Graph message item as a `Message`. Never raises on odd values."""
    problems: list[str] = []
    sender = _address(item.get("from"), problems)
    if sender is None:
        problems.append(NO_FROM)
    outbound = folder.lower() == SENT_FOLDER or (sender is not None and sender.email in own)
    date = exchange_date(item, outbound, problems)
    sent = parse_graph_date(item.get("sentDateTime"))
    headers = _headers(item.get(REPLY_HEADER_FIELD))
    reply_to = headers.get("in-reply-to", "")
    internet_id = item.get("internetMessageId")
    return Message(
        account=account,
        provider_id=str(item.get("id", "")),
        thread_key=thread_key,
        message_id=normalize_message_id(internet_id) if isinstance(internet_id, str) else None,
        date=date,
        direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
        sender=sender,
        to=_addresses(item.get("toRecipients"), problems),
        cc=_addresses(item.get("ccRecipients"), problems),
        bcc=_addresses(item.get("bccRecipients"), problems),
        subject=clean_text(str(item.get("subject") or "")),
        snippet="",
        in_reply_to=normalize_message_id(reply_to) if reply_to else None,
        references=parse_references(headers.get("references", "")),
        labels=(folder.lower(),),
        date_header=format_datetime(sent) if sent is not None else "",
        problems=tuple(dict.fromkeys(problems)),
    )


def _headers(values: Any) -> dict[str, str]:
    """The first value of each internet message header, by lower-cased name."""
    found: dict[str, str] = {}
    for header in values or ():
        if isinstance(header, Mapping):
            name = str(header.get("name") or "").strip().lower()
            if name and name not in found:
                found[name] = str(header.get("value") or "")
    return found
