"""Header text hygiene: unfolding, unsafe characters, RFC 2047 encoded-words, size cuts.

Never raises on any text; linear in its input.
"""

from __future__ import annotations

import binascii
import codecs
import re

MAX_HEADER_CHARS = 256 * 1024  # what is parsed of one header field; the rest is dropped
HEADER_TOO_LARGE = "header_too_large"

_FOLDING = re.compile(r"\r?\n(?=[ \t])")
# Control characters (NUL included) and lone surrogates: not storable, not encodable as UTF-8.
UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
SPACES = re.compile(r"\s+")
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
    text = UNSAFE_CHARS.sub(" ", text)
    return SPACES.sub(" ", text).strip()


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


def cut_header(value: str, problems: list[str], *, at_separator: bool = False) -> str:
    """`value` cut to `MAX_HEADER_CHARS` (at the last comma for address lists)."""
    if len(value) <= MAX_HEADER_CHARS:
        return value
    problems.append(HEADER_TOO_LARGE)
    value = value[:MAX_HEADER_CHARS]
    if at_separator:
        value = value[: max(value.rfind(","), 0)]
    return value
