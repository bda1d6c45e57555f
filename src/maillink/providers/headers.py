"""Header parsing and normalization: raw RFC 5322 header values → `model.Message` fields.

Every function here takes any text and never raises: what cannot be understood is skipped and
reported as a problem code (``bad_address``, ``no_from``, ``bad_date``, ``header_too_large``…),
so that one odd email never stops a round. Parsing is linear in the input, and inputs are cut at
`MAX_HEADER_CHARS` first, so a hostile 2 MB header costs milliseconds.
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from maillink.model import Address, Direction, Message

MAX_HEADER_CHARS = 256 * 1024  # what is parsed of one header field; the rest is dropped

BAD_ADDRESS = "bad_address"
NO_FROM = "no_from"
MULTIPLE_FROM = "multiple_from"
BAD_DATE = "bad_date"
HEADER_TOO_LARGE = "header_too_large"

ADDRESS_FIELDS = ("from", "to", "cc", "bcc")

# ---------------------------------------------------------------------------------------------
# Text hygiene and RFC 2047 encoded-words

_FOLDING = re.compile(r"\r?\n(?=[ \t])")
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")  # controls, NUL, lone surrogates
_SPACES = re.compile(r"\s+")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
# Charsets mail really uses. Other codecs (punycode, unicode_escape, rot13…) are not text
# encodings of mail and some are slow on long input: their words are decoded as UTF-8.
_MAIL_CHARSETS = (
    "utf", "ascii", "iso8859", "latin", "cp", "mac", "koi8", "big5", "gb", "hz", "euc",
    "shift_jis", "iso2022", "johab", "tis", "kz1048", "ptcp154", "hp-roman",
)  # fmt: skip


def clean_text(text: str) -> str:
    """Unfold, turn control characters and lone surrogates into spaces, collapse whitespace.

    What comes out can be stored in any database (no NUL) and encoded as UTF-8.
    """
    text = _FOLDING.sub("", text)
    text = _UNSAFE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _codec_for(charset: str) -> str:
    name = charset.split("*", 1)[0].strip().lower()  # RFC 2231 language suffix: utf-8*en
    try:
        codec = codecs.lookup(name).name
    except (LookupError, ValueError):
        return "utf-8"
    return codec if codec.startswith(_MAIL_CHARSETS) else "utf-8"


def _word_bytes(encoding: str, payload: str) -> bytes | None:
    raw = payload.encode("utf-8", "surrogatepass")
    if encoding in "qQ":
        raw = raw.replace(b"_", b" ")
        return _Q_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    raw = _NOT_BASE64.sub(b"", raw)
    raw += b"=" * (-len(raw) % 4)
    try:
        return binascii.a2b_base64(raw)
    except (binascii.Error, ValueError):
        return None


def _decode_bytes(data: bytes, codec: str) -> str:
    try:
        return data.decode(codec, "replace")
    except (LookupError, UnicodeError, ValueError):
        return data.decode("utf-8", "replace")


def decode_encoded_words(text: str) -> str:
    """Decode the RFC 2047 encoded-words in `text` (``=?utf-8?q?J=C3=B6rg?=`` → ``Jörg``).

    Adjacent words in one charset are joined as bytes before decoding, since mailers split a
    multi-byte character across two words; whitespace between encoded-words is dropped.
    Undecodable words stay as written.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = bytearray()
    pending_codec = ""
    position = 0

    def flush() -> None:
        nonlocal pending_codec
        if pending_codec:
            out.append(_decode_bytes(bytes(pending), pending_codec))
        pending.clear()
        pending_codec = ""

    for match in _ENCODED_WORD.finditer(text):
        gap = text[position : match.start()]
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            continue  # stays in the next gap, as written
        if gap and not (pending_codec and gap.isspace()):
            flush()
            out.append(gap)
        codec = _codec_for(match.group(1))
        if codec != pending_codec:
            flush()
            pending_codec = codec
        pending += data
        position = match.end()
    flush()
    out.append(text[position:])
    return "".join(out)


def _cut(value: str, problems: list[str], *, at_separator: bool = False) -> str:
    """`value` cut to `MAX_HEADER_CHARS` (at the last comma for address lists)."""
    if len(value) <= MAX_HEADER_CHARS:
        return value
    problems.append(HEADER_TOO_LARGE)
    value = value[:MAX_HEADER_CHARS]
    if at_separator:
        value = value[: max(value.rfind(","), 0)]
    return value


# ---------------------------------------------------------------------------------------------
# Addresses

_DOT_ATOM = re.compile(r"[^\s()<>\[\]:;@\\,\".]+(?:\.[^\s()<>\[\]:;@\\,\".]+)*")
_DOMAIN_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_TOKEN = re.compile(
    r"""(?P<enc>=\?[^?\s]{1,64}\?[bBqQ]\?[^?\s]*\?=)
      | (?P<quoted>"(?:[^"\\]|\\.)*(?:"|\\?$))
      | (?P<angle><[^<>]*>?)
      | (?P<sep>[,;:])
      | (?P<space>\s+)
      | (?P<comment>\()
      | (?P<word>[^"(<>,;:\s]+|>)
    """,
    re.VERBOSE | re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _skip_comment(text: str, start: int) -> tuple[str, int]:
    """The text of the (possibly nested) comment opening at `start`, and the index after it."""
    depth, i, chars = 0, start, []
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            chars.append(text[i + 1])
            i += 2
            continue
        if char == "(":
            depth += 1
            if depth > 1:
                chars.append(char)
        elif char == ")":
            depth -= 1
            if depth == 0:
                return "".join(chars), i + 1
            chars.append(char)
        else:
            chars.append(char)
        i += 1
    return "".join(chars), i


def _tokens(text: str) -> Iterable[tuple[str, str]]:
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:  # cannot happen (word catches the rest), but never loop on it
            yield "word", text[position]
            position += 1
            continue
        kind = match.lastgroup or "word"
        if kind == "comment":
            body, position = _skip_comment(text, position)
            yield "comment", body
            continue
        yield kind, match.group()
        position = match.end()


def _unquote(quoted: str) -> str:
    inner = quoted[1:-1] if len(quoted) >= 2 and quoted.endswith('"') else quoted[1:]
    return _UNESCAPE.sub(r"\1", inner)


def normalize_email(spec: str) -> str | None:
    """`spec` (an addr-spec) lower-cased with its domain in ASCII (punycode), or None if invalid."""
    spec = spec.strip()
    if ":" in spec and spec.startswith("@"):  # obsolete source route: @a,@b:user@domain
        spec = spec.rpartition(":")[2]
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or _UNSAFE.search(spec):
        return None
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        inner = _unquote(local)
        local = inner if _DOT_ATOM.fullmatch(inner) else '"' + inner.replace('"', '\\"') + '"'
        if not inner:
            return None
    elif not _DOT_ATOM.fullmatch(local):
        return None
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None:
        return None
    return f"{local.lower()}@{ascii_domain}"


def _ascii_domain(domain: str) -> str | None:
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("[") and domain.endswith("]"):  # address literal: [192.0.2.1]
        return domain if re.fullmatch(r"\[[0-9a-f:.]+\]|\[ipv6:[0-9a-f:.]+\]", domain) else None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    labels = domain.split(".")
    if len(domain) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        return None
    return domain


class _Mailbox:
    """The tokens of one mailbox between separators, and what they mean."""

    __slots__ = ("angle", "comments", "parts")

    def __init__(self) -> None:
        self.parts: list[tuple[str, str]] = []  # (kind, text) before any <angle>
        self.angle: str | None = None
        self.comments: list[str] = []

    def add(self, kind: str, text: str) -> None:
        if kind == "comment":
            self.comments.append(text)
        elif kind == "angle":
            if self.angle is None:
                self.angle = text[1:-1] if text.endswith(">") else text[1:]
        elif self.angle is None:
            self.parts.append((kind, text))

    @property
    def empty(self) -> bool:
        return self.angle is None and all(kind == "space" for kind, _ in self.parts)


def _display_name(parts: Sequence[tuple[str, str]]) -> str:
    text = "".join(_unquote(text) if kind == "quoted" else text for kind, text in parts)
    return clean_text(decode_encoded_words(text))


def _resolve(box: _Mailbox, decode: bool) -> tuple[list[Address], bool]:
    """The addresses of one mailbox, and whether it was understood."""
    if box.angle is not None:
        spec = box.angle
        if decode and "=?" in spec:
            spec = decode_encoded_words(spec)
        email = normalize_email(spec)
        if email is None:
            return [], False
        name = _display_name(box.parts) or clean_text(" ".join(box.comments))
        return [Address(email, name)], True
    words = list(box.parts)
    while words and words[0][0] == "space":
        words.pop(0)
    while words and words[-1][0] == "space":
        words.pop()
    if decode and any(kind == "enc" for kind, _ in words):
        # The whole mailbox written as encoded-words: =?utf-8?b?Sm9obiA8am9obkB4LmNvbT4=?=
        decoded = decode_encoded_words("".join(text for _, text in words))
        addresses, problems = _parse_list(decoded, decode=False)
        return addresses, bool(addresses) and not problems
    if any(kind in ("space", "enc") for kind, _ in words):
        return [], False  # "John Doe john@x.com": a phrase without <>
    email = normalize_email("".join(text for _, text in words))
    if email is None:
        return [], False
    return [Address(email, clean_text(" ".join(box.comments)))], True


def _parse_list(text: str, *, decode: bool = True) -> tuple[list[Address], list[str]]:
    addresses: list[Address] = []
    problems: list[str] = []
    box = _Mailbox()
    in_group = False

    def close() -> None:
        nonlocal box
        if not box.empty:
            found, understood = _resolve(box, decode)
            addresses.extend(found)
            if not understood:
                problems.append(BAD_ADDRESS)
        box = _Mailbox()

    for kind, token in _tokens(text):
        if kind == "sep" and token == ":" and not in_group and box.angle is None:
            box = _Mailbox()  # a group's display name: "Team: a@x.com, b@y.com;"
            in_group = True
        elif kind == "sep" and token == ";":
            close()  # the end of a group; also Outlook's "a@x.com; b@y.com"
            in_group = False
        elif kind == "sep" and token == ",":
            close()
        else:
            box.add(kind, token)
    close()
    return addresses, problems


def _dedupe(addresses: Iterable[Address]) -> tuple[Address, ...]:
    """First occurrence of each email wins, but a later display name fills an empty one."""
    seen: dict[str, Address] = {}
    for address in addresses:
        kept = seen.get(address.email)
        if kept is None:
            seen[address.email] = address
        elif not kept.name and address.name:
            seen[address.email] = Address(kept.email, address.name)
    return tuple(seen.values())


def normalize_address_list(value: str) -> tuple[tuple[Address, ...], tuple[str, ...]]:
    """The addresses of a From/To/Cc/Bcc value, and the problem codes met while parsing it.

    Handles display names (quoted, encoded-words), groups (``Team: a@x.com;``, empty groups),
    comments, IDN domains (to punycode), Outlook's ``;`` separator; addresses are lower-cased
    and deduplicated; an unreadable part is skipped with ``bad_address``.
    """
    problems: list[str] = []
    value = _cut(value, problems, at_separator=True)
    addresses, found = _parse_list(value)
    problems.extend(found)
    return _dedupe(addresses), _unique(problems)


# ---------------------------------------------------------------------------------------------
# Message-IDs, dates

_BRACKETED = re.compile(r"<([^<>]*)>")


def _clean_id(text: str) -> str | None:
    text = _UNSAFE.sub("", _SPACES.sub("", text)).strip("<>")
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
    return _cut(", ".join(kept), problems, at_separator=True)


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
        return _cut(values[0], problems) if values else ""

    date_header = first("date")
    header_date = parse_date_header(date_header) if date_header.strip() else None
    if date_header.strip() and header_date is None:
        problems.append(BAD_DATE)
    date = internal_date or header_date
    if date is not None:
        date = date.replace(tzinfo=UTC) if date.tzinfo is None else date.astimezone(UTC)

    label_ids = tuple(labels)
    own = {email for email in (normalize_email(a) for a in (account, *aliases)) if email}
    outbound = "SENT" in label_ids or (sender is not None and sender.email in own)
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
