"""Header parsing and normalization: raw RFC 5322 header values → `model.Message` fields.

Every function here takes any text and never raises: what cannot be understood is skipped and
reported as a problem code (``bad_address``, ``no_from``, ``bad_date``, ``header_too_large``…),
so that one odd email never stops a round. Parsing is linear in the input, and inputs are cut at
`MAX_HEADER_CHARS` first, so a hostile 2 MB header costs milliseconds. Address lists are in
`headers_address`, text and encoded-words in `headers_text`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from maillink.model import Address, Direction, Message
from maillink.providers.headers_address import (
    BAD_ADDRESS,
    normalize_address_list,
    normalize_email,
)
from maillink.providers.headers_text import (
    HEADER_TOO_LARGE,
    MAX_HEADER_CHARS,
    SPACES,
    UNSAFE_CHARS,
    clean_text,
    cut_header,
    decode_encoded_words,
)

__all__ = [
    "BAD_ADDRESS",
    "BAD_DATE",
    "HEADER_TOO_LARGE",
    "MAX_HEADER_CHARS",
    "MULTIPLE_FROM",
    "NO_FROM",
    "clean_text",
    "decode_encoded_words",
    "message_from_headers",
    "normalize_address_list",
    "normalize_email",
    "normalize_message_id",
    "parse_date_header",
    "parse_references",
]

NO_FROM = "no_from"
MULTIPLE_FROM = "multiple_from"
BAD_DATE = "bad_date"

ADDRESS_FIELDS = ("from", "to", "cc", "bcc")

# ---------------------------------------------------------------------------------------------
# Message-IDs, dates

_BRACKETED = re.compile(r"<([^<>]*)>")


def _clean_id(text: str) -> str | None:
    text = UNSAFE_CHARS.sub("", SPACES.sub("", text)).strip("<>")
    return text or None


def normalize_message_id(value: str) -> str | None:
    """The Message-ID (or In-Reply-To) in `value` without angle brackets or whitespace.

    The first ``<…>`` wins (In-Reply-To often trails a comment); without brackets, the first word.
    """
    value = value[:MAX_HEADER_CHARS]
    for match in _BRACKETED.finditer(value):
        found = _clean_id(match.group(1))
        if found:
            return found
    words = value.split()
    return _clean_id(words[0]) if words else None


def parse_references(value: str) -> tuple[str, ...]:
    """The ids of a References header, in order, without brackets, duplicates dropped."""
    value = value[:MAX_HEADER_CHARS]
    found = [_clean_id(m.group(1)) for m in _BRACKETED.finditer(value)]
    if not found:
        found = [_clean_id(word) for word in value.split()]
    return tuple(dict.fromkeys(ref for ref in found if ref))


def parse_date_header(value: str) -> datetime | None:
    """The Date header as a UTC datetime, or None when it cannot be read."""
    value = clean_text(value[:512])
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except Exception:  # the stdlib parser raises ValueError, TypeError, IndexError, Overflow…
        return None
    if parsed.tzinfo is None:  # "-0000": UTC with no claim about the local zone
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The message


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _fields(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        fields.setdefault(str(name).strip().lower(), []).append(str(value))
    return fields


def _joined(values: list[str], problems: list[str]) -> str:
    """Repeated fields (two To headers) as one list, cut at `MAX_HEADER_CHARS` overall."""
    total, kept = 0, []
    for value in values:
        kept.append(value)
        total += len(value) + 2
        if total > MAX_HEADER_CHARS:
            break
    return cut_header(", ".join(kept), problems, at_separator=True)


@functools.lru_cache(maxsize=256)  # the same mailbox's, message after message
def _own_addresses(account: str, aliases: tuple[str, ...]) -> frozenset[str]:
    return frozenset(e for e in (normalize_email(a) for a in (account, *aliases)) if e)


def message_from_headers(
    account: str,
    provider_id: str,
    thread_key: str,
    headers: Iterable[tuple[str, str]],
    *,
    internal_date: datetime | None,
    labels: Iterable[str] = (),
    snippet: str = "",
    aliases: Iterable[str] = (),
) -> Message:
    """Build a `Message` from raw header (name, value) pairs. Never raises on any header text.

    `date` is the provider's `internal_date` (when it received or sent the email), falling back
    to the Date header; `direction` is OUTBOUND when the SENT label is present or From is the
    account's address or one of its `aliases`.
    """
    fields = _fields(headers)
    problems: list[str] = []
    lists: dict[str, tuple[Address, ...]] = {}
    for name in ADDRESS_FIELDS:
        values = fields.get(name)
        if not values:
            lists[name] = ()
            continue
        lists[name], found = normalize_address_list(_joined(values, problems))
        problems.extend(found)

    senders = lists["from"]
    sender = senders[0] if senders else None
    if sender is None:
        problems.append(NO_FROM)
    elif len(senders) > 1:
        problems.append(MULTIPLE_FROM)

    def first(name: str) -> str:
        values = fields.get(name)
        return cut_header(values[0], problems) if values else ""

    date_header = first("date")
    header_date = parse_date_header(date_header) if date_header.strip() else None
    if date_header.strip() and header_date is None:
        problems.append(BAD_DATE)
    date = internal_date or header_date
    if date is not None:
        date = date.replace(tzinfo=UTC) if date.tzinfo is None else date.astimezone(UTC)

    label_ids = tuple(labels)
    outbound = "SENT" in label_ids or (
        sender is not None and sender.email in _own_addresses(account, tuple(aliases))
    )
    reply_to = first("in-reply-to")

    return Message(
        account=account,
        provider_id=provider_id,
        thread_key=thread_key,
        message_id=normalize_message_id(first("message-id")),
        date=date,
        direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
        sender=sender,
        to=lists["to"],
        cc=lists["cc"],
        bcc=lists["bcc"],
        subject=clean_text(decode_encoded_words(first("subject"))),
        snippet=clean_text(snippet),
        in_reply_to=normalize_message_id(reply_to) if reply_to else None,
        references=parse_references(first("references")),
        labels=label_ids,
        date_header=clean_text(date_header),
        problems=_unique(problems),
    )
