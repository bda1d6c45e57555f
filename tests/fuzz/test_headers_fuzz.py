"""Fuzzing header parsing and normalization: any bytes in any header, decoded as a provider or a
mail client might (UTF-8 with surrogate escapes, Latin-1), never stop a message; what comes out
is normalized, storable, and findable again by its maillink-id after a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maillink.crm.activity import render_note
from maillink.crm.pipedrive_items import note_has_key
from maillink.model import Message
from maillink.providers.gmail_fetch import message_from_gmail
from maillink.providers.headers import (
    BAD_ADDRESS,
    BAD_DATE,
    HEADER_TOO_LARGE,
    MULTIPLE_FROM,
    NO_FROM,
    message_from_headers,
    normalize_email,
    normalize_message_id,
    parse_references,
)
from maillink.sandbox.pipedrive.data import note_has_key as sandbox_note_has_key
from maillink.store.mail import _headers

ACCOUNT = "owner@team.example"
PROBLEMS = {BAD_ADDRESS, BAD_DATE, HEADER_TOO_LARGE, MULTIPLE_FROM, NO_FROM}
FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

KNOWN_NAMES = ["From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "In-Reply-To",
               "References", "from", "MESSAGE-ID", "Reply-To", "X-Mailer"]  # fmt: skip
# bytes the grammar cares about, and any byte at all
GRAMMAR_BYTES = st.binary(max_size=80).map(bytes) | st.lists(
    st.sampled_from([*b'<>"(),;:@.\\=?_ \r\n\t', *b"abcQB8", 0, 0x80, 0xC3, 0xA9, 0xFF, 0xED]),
    max_size=80,
).map(bytes)


def decoded(data: bytes, how: str) -> str:
    if how == "latin-1":
        return data.decode("latin-1")
    return data.decode("utf-8", "surrogateescape")  # lone surrogates, as Python's email does


@st.composite
def any_header(draw: st.DrawFn) -> tuple[str, str]:
    how = draw(st.sampled_from(["utf-8", "latin-1"]))
    name = draw(st.sampled_from(KNOWN_NAMES) | GRAMMAR_BYTES.map(lambda b: decoded(b, how)))
    return name, decoded(draw(GRAMMAR_BYTES), how)


def _storable(text: str) -> None:
    text.encode("utf-8")  # no lone surrogates: every database takes it
    assert "\x00" not in text


def _check(m: Message) -> None:
    assert set(m.problems) <= PROBLEMS
    for address in m.participants:
        assert address.email == address.email.lower()
        assert address.email.count("@") >= 1 and not any(c.isspace() for c in address.email)
        assert address.domain.isascii()
        assert normalize_email(address.email) == address.email  # normalized once for all
        _storable(address.email)
        _storable(address.name)
    for ident in (m.message_id, m.in_reply_to, *m.references):
        if ident is not None:
            assert ident and not any(c.isspace() for c in ident)
            _storable(ident)
    for text in (m.subject, m.snippet, m.date_header):
        _storable(text)
    assert m.date is None or m.date.utcoffset() is not None
    json.dumps(_headers(m), ensure_ascii=False).encode("utf-8")  # what the store writes


@FUZZ
@given(st.lists(any_header(), max_size=10), st.booleans())
def test_any_bytes_in_any_header_give_a_normalized_storable_message(
    headers: list[tuple[str, str]], dated: bool
) -> None:
    when = datetime(2025, 5, 1, tzinfo=UTC) if dated else None
    m = message_from_headers(ACCOUNT, "p1", "t1", headers, internal_date=when)
    _check(m)


@FUZZ
@given(st.lists(any_header(), max_size=8))
def test_every_email_is_found_again_by_the_maillink_id_in_its_note(
    headers: list[tuple[str, str]],
) -> None:
    """After a crash, the outbox finds an activity by the key line of its note: any Message-ID
    must survive the note's HTML escaping, for maillink's reader and for the CRM's text."""
    m = message_from_headers(
        ACCOUNT, "p1", "t1", headers, internal_date=datetime(2025, 5, 1, tzinfo=UTC)
    )
    note = render_note(m)
    assert note_has_key(note, m.key)
    assert sandbox_note_has_key(note, m.key)


@FUZZ
@given(GRAMMAR_BYTES, st.sampled_from(["utf-8", "latin-1"]))
def test_normalizing_is_idempotent(data: bytes, how: str) -> None:
    text = decoded(data, how)
    email = normalize_email(text)
    assert email is None or normalize_email(email) == email
    ident = normalize_message_id(text)
    assert ident is None or normalize_message_id(ident) == ident
    refs = parse_references(text)
    assert parse_references(" ".join(refs)) == refs


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
GMAIL_KEYS = ["id", "threadId", "labelIds", "snippet", "internalDate", "payload"]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(GMAIL_KEYS), JSON, max_size=6),
    st.lists(st.dictionaries(st.sampled_from(["name", "value"]), JSON, max_size=2), max_size=5),
)
def test_any_gmail_resource_shape_gives_a_message(
    raw: dict[str, object], headers: list[object]
) -> None:
    if isinstance(raw.get("payload"), dict):
        raw["payload"] = {**raw["payload"], "headers": headers}  # type: ignore[dict-item]
    try:
        m = message_from_gmail(ACCOUNT, (), raw)
    except (AttributeError, TypeError) as exc:  # pragma: no cover - the failure we look for
        raise AssertionError(f"{raw!r} broke the Gmail reader: {exc!r}") from exc
    _check(m)
