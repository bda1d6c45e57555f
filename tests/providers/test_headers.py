"""Header normalization: addresses, ids, dates, direction — and never an exception."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.opcount import lines_executed

from maillink.model import Address, Direction, Message
from maillink.providers import headers, headers_address, headers_text
from maillink.providers.headers import (
    MAX_HEADER_CHARS,
    decode_encoded_words,
    message_from_headers,
    normalize_address_list,
    normalize_message_id,
    parse_date_header,
    parse_references,
)

ACCOUNT = "rep@acme.com"
RECEIVED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def message(*headers: tuple[str, str], **kwargs: object) -> Message:
    options: dict[str, object] = {"internal_date": RECEIVED, "labels": ("INBOX",), "snippet": ""}
    options.update(kwargs)
    return message_from_headers(ACCOUNT, "m1", "t1", list(headers), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("John Doe <John.Doe@Example.COM>", [("john.doe@example.com", "John Doe")]),
        ('"Doe, John" <j@x.com>, b@y.com', [("j@x.com", "Doe, John"), ("b@y.com", "")]),
        ("john@x.com (John Smith)", [("john@x.com", "John Smith")]),
        ("=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@x.de>", [("jorg@x.de", "Jörg Müller")]),
        ("=?ISO-8859-1?Q?Andr=E9?= <andre@x.fr>", [("andre@x.fr", "André")]),
        ("=?utf-8?Q?Doe,_John?= <j@x.com>", [("j@x.com", "Doe, John")]),
        # a character split across two base64 words, as some mailers write them
        ("=?utf-8?B?SsO=?= =?utf-8?B?tnJn?= <j@x.de>", [("j@x.de", "Jörg")]),
        # the whole mailbox written as an encoded-word
        ("=?UTF-8?B?Sm9obiA8Sm9obkBYLmNvbT4=?=", [("john@x.com", "John")]),
        ("Jörg <=?utf-8?q?j=C3=B6rg?=@x.de>", [("jörg@x.de", "Jörg")]),
        ("Team: a@x.com, B@Y.com;", [("a@x.com", ""), ("b@y.com", "")]),
        ("Team: a@x.com;, c@z.com", [("a@x.com", ""), ("c@z.com", "")]),
        ("undisclosed-recipients:;", []),
        ("Müller <m@bücher.de>", [("m@xn--bcher-kva.de", "Müller")]),
        ("a@x.com; b@y.com", [("a@x.com", ""), ("b@y.com", "")]),  # Outlook's separator
        ("a@x.com, A <A@X.COM>", [("a@x.com", "A")]),  # duplicate, its name kept
        ("<@relay.example:u@x.com>", [("u@x.com", "")]),  # obsolete source route
        ('"john doe"@x.com', [('"john doe"@x.com', "")]),
        ("John <john@x.com.>", [("john@x.com", "John")]),
        ("", []),
    ],
)
def test_address_lists_are_normalized(value: str, expected: list[tuple[str, str]]) -> None:
    addresses, problems = normalize_address_list(value)
    assert [(a.email, a.name) for a in addresses] == expected
    assert problems == ()


@pytest.mark.parametrize(
    "value",
    [
        "John Doe john@x.com",  # a phrase without angle brackets
        "nobody",
        "<>",
        "x@-bad-.com",
        "x@a..com",
        "x@" + "é" * 70 + ".com",  # an IDN label too long for the idna codec
        "x@\udc80.com",  # a lone surrogate
        "a@x\x00y.com",
    ],
)
def test_unreadable_addresses_are_skipped_with_bad_address(value: str) -> None:
    addresses, problems = normalize_address_list(f"ok@x.com, {value}")
    assert addresses == (Address("ok@x.com"),)
    assert problems == ("bad_address",)


def test_encoded_words_are_decoded_and_bad_ones_kept_as_written() -> None:
    assert decode_encoded_words("=?utf-8?b?w6k=?= and =?utf-8?q?=C3=A9?=") == "é and é"
    assert decode_encoded_words("=?x-unknown?q?caf=C3=A9?=") == "café"
    assert decode_encoded_words("=?punycode?q?abc?=") == "abc"  # not a mail charset
    assert decode_encoded_words("plain") == "plain"


def test_message_ids_and_references_lose_brackets_and_whitespace() -> None:
    assert normalize_message_id("  <abc.123@mail.example.com>\r\n") == "abc.123@mail.example.com"
    assert normalize_message_id("<a@b> (John's message of Monday)") == "a@b"
    assert normalize_message_id("bare-id@host") == "bare-id@host"
    assert normalize_message_id("   ") is None
    assert parse_references("<a@b>\r\n <c@d>\t<a@b>") == ("a@b", "c@d")
    assert parse_references("a@b c@d") == ("a@b", "c@d")


def test_date_header_is_read_as_utc_and_garbage_is_none() -> None:
    parsed = parse_date_header("Mon, 2 Jan 2023 10:00:00 +0200")
    assert parsed == datetime(2023, 1, 2, 8, 0, tzinfo=UTC)
    assert parse_date_header("2 Jan 2023 10:00:00 -0000") == datetime(2023, 1, 2, 10, tzinfo=UTC)
    assert parse_date_header("not a date") is None
    assert parse_date_header("Mon, 2 Jan 99999 10:00:00 +0000") is None


def test_message_carries_normalized_headers() -> None:
    m = message(
        ("From", "=?utf-8?q?Ana_L=C3=B3pez?= <Ana@Client.example>"),
        ("To", "rep@acme.com, Boss <boss@acme.com>"),
        ("CC", "team: x@client.example, y@client.example;"),
        ("Subject", "=?utf-8?q?Devis_pour_l=27ann=C3=A9e?=\r\n =?utf-8?q?_2024?="),
        ("Date", "Sun, 5 May 2024 10:00:00 +0200"),
        ("Message-ID", " <CAF123@mail.client.example> "),
        ("In-Reply-To", "<prev@acme.com>"),
        ("References", "<root@acme.com> <prev@acme.com>"),
        snippet="Hello\n there",
    )
    assert m.sender == Address("ana@client.example", "Ana López")
    assert [a.email for a in m.to] == ["rep@acme.com", "boss@acme.com"]
    assert [a.email for a in m.cc] == ["x@client.example", "y@client.example"]
    assert m.subject == "Devis pour l'année 2024"
    assert m.message_id == "CAF123@mail.client.example"
    assert m.in_reply_to == "prev@acme.com"
    assert m.references == ("root@acme.com", "prev@acme.com")
    assert m.date == RECEIVED  # the provider's date wins over the Date header
    assert m.date_header == "Sun, 5 May 2024 10:00:00 +0200"
    assert m.direction is Direction.INBOUND
    assert m.snippet == "Hello there"
    assert m.problems == ()


def test_date_falls_back_to_the_header_then_none() -> None:
    fallback = message(
        ("From", "a@x.com"), ("Date", "Sun, 5 May 2024 10:00:00 +0200"), internal_date=None
    )
    assert fallback.date == datetime(2024, 5, 5, 8, tzinfo=UTC)
    missing = message(("From", "a@x.com"), internal_date=None)
    assert missing.date is None
    garbled = message(("From", "a@x.com"), ("Date", "yesterday"), internal_date=None)
    assert garbled.date is None
    assert garbled.date_header == "yesterday"
    assert "bad_date" in garbled.problems


def test_missing_from_gives_no_sender_and_no_from() -> None:
    assert message(("To", "a@x.com")).problems == ("no_from",)
    unreadable = message(("From", "Mailer Daemon"))
    assert unreadable.sender is None
    assert unreadable.problems == ("bad_address", "no_from")


def test_missing_message_id_is_none() -> None:
    assert message(("From", "a@x.com")).message_id is None
    assert message(("From", "a@x.com"), ("Message-ID", "<>")).message_id is None


@pytest.mark.parametrize(
    ("sender", "labels", "aliases", "direction"),
    [
        ("client@x.com", ("INBOX",), (), Direction.INBOUND),
        ("Rep <REP@acme.com>", ("INBOX",), (), Direction.OUTBOUND),
        ("client@x.com", ("SENT",), (), Direction.OUTBOUND),
        ("sales@acme.com", ("INBOX",), ("Sales@Acme.com",), Direction.OUTBOUND),
        ("sales@acme.com", ("INBOX",), (), Direction.INBOUND),
    ],
)
def test_direction_follows_sent_label_or_own_address(
    sender: str, labels: tuple[str, ...], aliases: tuple[str, ...], direction: Direction
) -> None:
    assert message(("From", sender), labels=labels, aliases=aliases).direction is direction


def test_repeated_headers_are_merged() -> None:
    m = message(("From", "a@x.com"), ("To", "b@y.com"), ("to", "c@z.com, b@y.com"))
    assert [a.email for a in m.to] == ["b@y.com", "c@z.com"]


def _work(call: Callable[[], object]) -> int:
    """Lines of the header modules executed by `call`: how much work parsing takes."""
    return lines_executed(call, headers, headers_address, headers_text)


def test_a_list_of_500_recipients_parses_fast() -> None:
    def recipients(n: int) -> str:
        return ", ".join(f'"Person {i}" <person{i}@company{i % 40}.example>' for i in range(n))

    to = recipients(500)
    twice = recipients(1000)
    # Linear: twice the recipients, twice the work (a quadratic parser would do four times).
    work = _work(lambda: message(("From", "a@x.com"), ("To", to), ("Cc", to)))
    assert _work(lambda: message(("From", "a@x.com"), ("To", twice), ("Cc", twice))) < 2.2 * work
    m = message(("From", "a@x.com"), ("To", to), ("Cc", to))
    assert len(m.to) == 500
    assert len(m.cc) == 500
    assert m.problems == ()


@pytest.mark.parametrize(
    "payload",
    [
        ", ".join(f"user{i}@example.com" for i in range(200_000)),  # ~4 MB of addresses
        '"' + "x" * 2_000_000,  # an unterminated quoted string
        "(" * 2_000_000,  # a comment that never closes
        "<" * 2_000_000,
        "=?utf-8?q?" + "=41" * 700_000 + "?=",
        "Name <" + "a" * 2_000_000 + "@x.com>, b@y.com",
    ],
)
def test_a_huge_header_is_cut_quickly(payload: str) -> None:
    def parse() -> Message:
        return message(
            ("From", "a@x.com"), ("To", payload), ("Subject", payload), ("Date", payload)
        )

    # The work is bounded by what is kept of a header, not by the 2-4 MB that came in.
    assert _work(parse) < 10 * MAX_HEADER_CHARS
    m = parse()
    assert "header_too_large" in m.problems
    assert len(m.subject) <= MAX_HEADER_CHARS


def test_a_cut_address_list_keeps_whole_addresses_only() -> None:
    to = ", ".join(f"user{i}@example.com" for i in range(200_000))
    m = message(("From", "a@x.com"), ("To", to))
    assert 10_000 < len(m.to) < 200_000
    assert all(a.email.endswith("@example.com") for a in m.to)
    assert "bad_address" not in m.problems


HEADER_NAMES = st.sampled_from(
    ["From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "In-Reply-To", "References"]
)
# text with the characters that matter to the grammar, plus anything at all
GRAMMAR = st.text(alphabet=st.sampled_from(list('<>"(),;:@.\\=?_ \r\n\tabcQB8é\udc80\x00ü')))
ANY_TEXT = st.one_of(st.text(), GRAMMAR)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(HEADER_NAMES, ANY_TEXT), max_size=12), st.text(), st.lists(st.text()))
def test_any_header_text_gives_a_message(
    headers: list[tuple[str, str]], snippet: str, labels: list[str]
) -> None:
    m = message_from_headers(
        ACCOUNT, "id", "thread", headers, internal_date=None, labels=labels, snippet=snippet
    )
    assert isinstance(m, Message)
    for address in m.participants:
        assert address.email == address.email.lower()
        assert address.email.count("@") >= 1
        address.email.encode("utf-8")  # storable: no lone surrogates
        address.name.encode("utf-8")
        assert "\x00" not in address.name
    m.subject.encode("utf-8")
    assert m.date is None or m.date.tzinfo is not None


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_any_address_text_gives_addresses_or_problems(value: str) -> None:
    addresses, problems = normalize_address_list(value)
    assert set(problems) <= {"bad_address", "header_too_large"}
    assert len({a.email for a in addresses}) == len(addresses)
    for address in addresses:
        assert address.domain.isascii()


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1),
    st.sampled_from(["utf-8", "iso-8859-1", "UTF-8"]),
)
def test_encoded_display_names_round_trip(name: str, charset: str) -> None:
    from email.header import Header

    try:
        encoded = Header(name, charset).encode()
    except UnicodeEncodeError:
        return  # not representable in that charset
    addresses, problems = normalize_address_list(f"{encoded} <a@x.com>")
    assert problems == ()
    assert addresses[0].name == " ".join(name.split())


def test_repeated_address_values_are_parsed_once_and_huge_ones_never_kept() -> None:
    """From and To values repeat message after message: they are parsed once; a huge Cc list is
    parsed each time rather than kept."""
    value = '"Ann Buyer" <Ann@Customer.EXAMPLE>, bob@customer.example'
    first = normalize_address_list(value)
    before = headers_address._parsed.cache_info()
    assert normalize_address_list(value) == first
    assert headers_address._parsed.cache_info().hits == before.hits + 1

    huge = ", ".join(f"user{n}@customer.example" for n in range(5000))
    addresses, problems = normalize_address_list(huge)
    assert len(addresses) == 5000 and problems == ()
    assert headers_address._parsed.cache_info().currsize == before.currsize
