"""The slice of OData that Graph's mail endpoints take: $filter, $orderby, $select, and the
message representation (property names and shapes of the v1.0 `message` resource).

`$filter` supports comparisons (eq ne gt ge lt le) joined by and/or with parentheses, which is
what maillink sends; Graph's rule for $filter with $orderby on messages ("properties in $orderby
must appear in $filter first, in the same order", else InefficientFilter) is enforced.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response

from maillink.sandbox.microsoft.mailbox import BASIC_FORBIDDEN, StoredMessage, parse_iso

# The v1.0 message resource's properties (resources/message.md), with the shape of each.
MESSAGE_PROPERTIES = (
    "bccRecipients", "body", "bodyPreview", "categories", "ccRecipients", "changeKey",
    "conversationId", "conversationIndex", "createdDateTime", "flag", "from", "hasAttachments",
    "importance", "inferenceClassification", "internetMessageHeaders", "internetMessageId",
    "isDeliveryReceiptRequested", "isDraft", "isRead", "isReadReceiptRequested",
    "lastModifiedDateTime", "parentFolderId", "receivedDateTime", "replyTo", "sender",
    "sentDateTime", "subject", "toRecipients", "uniqueBody", "webLink",
)  # fmt: skip
# Returned without $select: everything but uniqueBody and internetMessageHeaders (the docs:
# "not provided by default" / "returned only on applying a $select query option").
DEFAULT_PROPERTIES = tuple(
    p for p in MESSAGE_PROPERTIES if p not in ("uniqueBody", "internetMessageHeaders")
)
DATE_PROPERTIES = frozenset(
    {"receivedDateTime", "sentDateTime", "createdDateTime", "lastModifiedDateTime"}
)
_OPERATORS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})


class ODataError(Exception):
    """A query Graph would refuse: `status`, Graph error `code`, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def parse_select(value: str | None) -> tuple[str, ...] | None:
    """The properties of a $select (None when absent); unknown ones are a 400 like Graph's."""
    if value is None:
        return None
    wanted: list[str] = []
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            continue
        match = next((p for p in MESSAGE_PROPERTIES if p.lower() == name.lower()), None)
        if match is None:
            raise ODataError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{name}' on type 'microsoft.graph.message'.",
            )
        if match not in wanted:
            wanted.append(match)
    return tuple(wanted)


def check_readable(select: tuple[str, ...] | None, scopes: Iterable[str]) -> None:
    """Mail.ReadBasic cannot read bodies: selecting one (or the default set) is a 403."""
    if "Mail.Read" in scopes:
        return
    properties = DEFAULT_PROPERTIES if select is None else select
    if BASIC_FORBIDDEN.intersection(properties):
        raise ODataError(
            403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        )


# --- $filter ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<string>'(?:[^']|'')*')"
    r"|(?P<word>[A-Za-z0-9_/.:+\-]+))"
)


@dataclass(frozen=True)
class Compare:
    prop: str
    op: str
    value: Any


@dataclass(frozen=True)
class Junction:
    op: str  # and | or
    parts: tuple[Any, ...]


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ODataError(400, "BadRequest", f"Invalid filter clause near '{text[position:]}'")
        kind = match.lastgroup or "word"
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _literal(kind: str, text: str) -> Any:
    if kind == "string":
        return text[1:-1].replace("''", "'")
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?", text):
        return parse_iso(text if "T" in text else text + "T00:00:00Z")
    try:
        return int(text)
    except ValueError:
        raise ODataError(400, "BadRequest", f"Invalid filter literal '{text}'") from None


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ODataError(400, "BadRequest", "Invalid filter clause: unexpected end")
        self.position += 1
        return token

    def expression(self) -> Any:
        parts = [self.conjunction()]
        while (token := self.peek()) is not None and token == ("word", "or"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Junction("or", tuple(parts))

    def conjunction(self) -> Any:
        parts = [self.atom()]
        while (token := self.peek()) is not None and token == ("word", "and"):
            self.take()
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else Junction("and", tuple(parts))

    def atom(self) -> Any:
        kind, text = self.take()
        if kind == "open":
            inner = self.expression()
            if self.take()[0] != "close":
                raise ODataError(400, "BadRequest", "Invalid filter clause: ')' expected")
            return inner
        if kind != "word":
            raise ODataError(400, "BadRequest", f"Invalid filter clause near {text}")
        op_kind, op = self.take()
        if op_kind != "word" or op not in _OPERATORS:
            raise ODataError(400, "BadRequest", f"Invalid filter operator '{op}'")
        value_kind, value = self.take()
        if value_kind not in ("string", "word"):
            raise ODataError(400, "BadRequest", "Invalid filter clause: a value expected")
        prop = next((p for p in MESSAGE_PROPERTIES if p.lower() == text.lower()), text)
        return Compare(prop, op, _literal(value_kind, value))


def parse_filter(text: str | None) -> Any:
    if text is None or not text.strip():
        return None
    parser = _Parser(text)
    tree = parser.expression()
    if parser.peek() is not None:
        raise ODataError(400, "BadRequest", "Invalid filter clause: trailing tokens")
    return tree


def filter_properties(tree: Any) -> list[str]:
    """The properties the filter names, in the order they first appear."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Compare):
            if node.prop not in found:
                found.append(node.prop)
        elif isinstance(node, Junction):
            for part in node.parts:
                walk(part)

    if tree is not None:
        walk(tree)
    return found


def _value(message: StoredMessage, prop: str) -> Any:
    head, _, rest = prop.partition("/")
    value = message.props.get(head)
    if rest and isinstance(value, dict):
        for key in rest.split("/"):
            value = value.get(key) if isinstance(value, dict) else None
    if head in DATE_PROPERTIES and isinstance(value, str):
        return parse_iso(value)
    return value


def matches(tree: Any, message: StoredMessage) -> bool:
    if tree is None:
        return True
    if isinstance(tree, Junction):
        results = (matches(part, message) for part in tree.parts)
        return all(results) if tree.op == "and" else any(results)
    left, right = _value(message, tree.prop), tree.value
    if isinstance(left, str) and isinstance(right, str) and tree.prop != "conversationId":
        left, right = left.lower(), right.lower()
    if tree.op == "eq":
        return bool(left == right)
    if tree.op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    if isinstance(left, datetime) != isinstance(right, datetime):
        raise ODataError(400, "BadRequest", f"Cannot compare {tree.prop} with that value")
    return {
        "gt": left > right,
        "ge": left >= right,
        "lt": left < right,
        "le": left <= right,
    }[tree.op]


def parse_orderby(text: str | None) -> list[tuple[str, bool]]:
    """[(property, descending)] of an $orderby."""
    if not text:
        return []
    order = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise ODataError(400, "BadRequest", f"Invalid $orderby '{text}'")
        prop = next((p for p in MESSAGE_PROPERTIES if p.lower() == words[0].lower()), None)
        if prop is None:
            raise ODataError(400, "BadRequest", f"Could not find a property named '{words[0]}'")
        order.append((prop, len(words) == 2 and words[1] == "desc"))
    return order


def check_order_with_filter(order: list[tuple[str, bool]], tree: Any) -> None:
    """Graph's rule for messages: $orderby properties lead the $filter, in the same order."""
    if not order or tree is None:
        return
    named = filter_properties(tree)
    wanted = [prop for prop, _ in order]
    if named[: len(wanted)] != wanted:
        raise ODataError(
            400,
            "InefficientFilter",
            "The restriction or sort order is too complex for this operation.",
        )


def render_message(
    message: StoredMessage,
    select: tuple[str, ...] | None,
    *,
    immutable: bool,
    only: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The JSON of a message with the properties selected (`only`: a partial update's subset)."""
    props = DEFAULT_PROPERTIES if select is None else select
    if only is not None:
        keep = set(only)
        props = tuple(p for p in props if p in keep)
    body: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": f'W/"{message.props.get("changeKey", "")}"',
        "id": message.id if immutable else message.regular_id(),
    }
    for prop in props:
        body[prop] = message.props.get(prop)
    return body


def graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")
