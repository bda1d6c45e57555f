"""Address lists (From, To, Cc, Bcc): RFC 5322 mailboxes and groups, as mailers really write them.

A small linear tokenizer instead of `email.utils.getaddresses`: it handles encoded-words (even
around commas or in the address), groups, comments, Outlook's ``;`` separator and IDN domains,
reports what it skips as ``bad_address``, and never raises.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from maillink.model import Address
from maillink.providers.headers_text import (
    HEADER_TOO_LARGE,
    UNSAFE_CHARS,
    clean_text,
    cut_header,
    decode_encoded_words,
)

__all__ = ["BAD_ADDRESS", "HEADER_TOO_LARGE", "normalize_address_list", "normalize_email"]

BAD_ADDRESS = "bad_address"

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
    if len(spec) <= _CACHED_CHARS:  # a mailbox's addresses repeat message after message
        return _normalized(spec)
    return _normalized.__wrapped__(spec)


_CACHED_CHARS = 512  # longer values are parsed each time: the caches stay small


@functools.lru_cache(maxsize=8192)
def _normalized(spec: str) -> str | None:
    spec = spec.strip()
    if ":" in spec and spec.startswith("@"):  # obsolete source route: @a,@b:user@domain
        spec = spec.rpartition(":")[2]
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or UNSAFE_CHARS.search(spec):
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
    if len(value) <= _CACHED_CHARS:  # From and To values repeat from message to message
        return _parsed(value)
    return _parsed.__wrapped__(value)


@functools.lru_cache(maxsize=4096)
def _parsed(value: str) -> tuple[tuple[Address, ...], tuple[str, ...]]:
    problems: list[str] = []
    value = cut_header(value, problems, at_separator=True)
    addresses, found = _parse_list(value)
    problems.extend(found)
    return _dedupe(addresses), tuple(dict.fromkeys(problems))
