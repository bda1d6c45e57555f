"""The Gmail API v1 routes of the sandbox: profile, messages list/get, threads get, history list.

Each call authenticates its bearer token, checks the userId against the token's mailbox, takes
its quota units (when a quota is set), counts itself in the meter, then answers from the mailbox.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flask import Flask, Response, request

from maillink.sandbox._server import Meter
from maillink.sandbox.google.errors import (
    QueryArgs,
    bad_request,
    forbidden,
    json_response,
    not_found,
    rate_limited,
    unauthenticated,
)
from maillink.sandbox.google.mailbox import (
    HISTORY_TYPES,
    HistoryExpiredError,
    HistoryRecord,
    Mailbox,
    StoredMessage,
)
from maillink.sandbox.google.oauth import SCOPE_METADATA, Grant, OAuthState

# Quota units per call (Google's model before 2026; [gmail] quota_model, docs/configuration.md).
UNITS = {
    "gmail.users.getProfile": 1,
    "gmail.messages.list": 5,
    "gmail.messages.get": 5,
    "gmail.threads.get": 10,
    "gmail.history.list": 2,
}
DEFAULT_PAGE = 100
MAX_PAGE = 500
_FORMATS = ("minimal", "full", "raw", "metadata")


class QuotaBuckets:
    """A token bucket of quota units per mailbox, refilled at `units_per_second`."""

    def __init__(self, units_per_second: float, clock: Callable[[], float] = time.monotonic):
        if not units_per_second > 0:
            raise ValueError("quota_units_per_second must be positive")
        self.rate = units_per_second
        self.capacity = max(units_per_second, float(max(UNITS.values())))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, units: int) -> float:
        """0.0 when the units are granted, else the seconds until they would be."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= units:
            self._buckets[key] = (tokens - units, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (units - tokens) / self.rate


@dataclass
class GmailContext:
    """What the Gmail routes share with the sandbox; every read and write holds `lock`."""

    lock: threading.RLock
    mailboxes: dict[str, Mailbox]
    oauth: OAuthState
    meter: Meter
    quota: QuotaBuckets | None = None
    # One entry per message whose headers were served (messages.get, each message of a
    # threads.get): (mailbox, message id, which client fetched it: a digest of its access token).
    fetches: list[tuple[str, str, str]] = field(default_factory=list)

    def record_fetch(self, mailbox: str, message_ids: Iterable[str]) -> None:
        """Remember who fetched these messages; the caller holds the lock."""
        fetcher = _fetcher()
        self.fetches.extend((mailbox, message_id, fetcher) for message_id in message_ids)


def encode_token(*parts: object) -> str:
    return (
        base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )


def decode_token(token: str, kind: str, arity: int) -> list[object]:
    """The parts of a page token made by `encode_token(kind, ...)`; 400 for anything else."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        parts = None
    if not isinstance(parts, list) or len(parts) != arity or parts[0] != kind:
        raise bad_request("Invalid pageToken")
    return parts[1:]


def _bearer_token() -> str | None:
    token = request.args.get("access_token")
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
    return token


def _fetcher() -> str:
    """Who sent the request in hand: each process refreshes its own access token, so its
    digest tells daemons apart (the token itself is never kept)."""
    return hashlib.sha256((_bearer_token() or "").encode()).hexdigest()[:16]


def _begin_call(ctx: GmailContext, name: str, user_id: str) -> Mailbox:
    """Count, authenticate, authorize and charge one call; the caller holds the lock."""
    ctx.meter.count(name)
    grant = _authorize(ctx.oauth, user_id)
    _charge(ctx, name, grant.email)
    return ctx.mailboxes[grant.email]


def _authorize(oauth: OAuthState, user_id: str) -> Grant:
    """The grant of the request's bearer token, if it may read `user_id`'s metadata."""
    token = _bearer_token()
    grant = oauth.grant_for(token) if token else None
    if grant is None:
        raise unauthenticated()
    if SCOPE_METADATA not in grant.scopes:
        raise forbidden(
            "Request had insufficient authentication scopes.", "insufficientPermissions"
        )
    if user_id != "me" and user_id.lower() != grant.email:
        raise forbidden(f"Delegation denied for {grant.email}")
    return grant


def _charge(ctx: GmailContext, name: str, mailbox: str) -> None:
    """Take the call's quota units from the mailbox's bucket (429 when empty), then meter them."""
    if ctx.quota is not None:
        wait = ctx.quota.take(mailbox, UNITS[name])
        if wait > 0:
            raise rate_limited(max(1, math.ceil(wait)))
    ctx.meter.count(name, UNITS[name], n=0)


def _message_format(args: QueryArgs) -> str:
    fmt = args.choice("format", "full", _FORMATS)
    if fmt in ("full", "raw"):
        raise forbidden(f"Metadata scope doesn't allow format {fmt.upper()}")
    return fmt


def message_body(
    message: StoredMessage, fmt: str, header_names: Iterable[str]
) -> dict[str, object]:
    """A Message resource in format minimal or metadata."""
    body: dict[str, object] = {"id": message.id, "threadId": message.thread_id}
    if message.label_ids:
        body["labelIds"] = list(message.label_ids)
    body.update(
        snippet=message.snippet,
        sizeEstimate=message.size_estimate,
        historyId=str(message.history_id),
        internalDate=str(message.internal_ms),
    )
    if fmt == "metadata":
        wanted = {name.lower() for name in header_names}
        headers = [
            {"name": name, "value": value}
            for name, value in message.headers
            if not wanted or name.lower() in wanted
        ]
        content_type = next(
            (v for n, v in message.headers if n.lower() == "content-type"), "text/plain"
        )
        body["payload"] = {"mimeType": content_type.split(";")[0].strip(), "headers": headers}
    return body


def _history_body(record: HistoryRecord) -> dict[str, object]:
    ref = {"id": record.message_id, "threadId": record.thread_id}
    full = {**ref, "labelIds": list(record.label_ids)}
    body: dict[str, object] = {"id": str(record.id), "messages": [ref]}
    if record.kind == "messageAdded":
        body["messagesAdded"] = [{"message": full}]
    elif record.kind == "messageDeleted":
        body["messagesDeleted"] = [{"message": full}]
    elif record.kind == "labelAdded":
        body["labelsAdded"] = [{"message": full, "labelIds": list(record.changed)}]
    else:
        body["labelsRemoved"] = [{"message": full, "labelIds": list(record.changed)}]
    return body


def register_gmail_routes(app: Flask, ctx: GmailContext) -> None:
    """Mount the Gmail API v1 methods under /gmail/v1/users/{userId}/ on `app`."""
    GmailRoutes(ctx).register(app)


_LIST_ARGS = frozenset({"maxResults", "pageToken", "labelIds", "includeSpamTrash", "q"})
_GET_ARGS = frozenset({"format", "metadataHeaders"})
_HISTORY_ARGS = frozenset({"startHistoryId", "historyTypes", "pageToken", "maxResults", "labelId"})


class GmailRoutes:
    """One handler per Gmail method: begin the call (auth, quota, meter), parse its query,
    answer from the mailbox, render the resource. Each holds the sandbox lock throughout."""

    def __init__(self, ctx: GmailContext) -> None:
        self.ctx = ctx

    def register(self, app: Flask) -> None:
        base = "/gmail/v1/users/<user_id>"
        for rule, view in (
            ("/profile", self.get_profile),
            ("/messages", self.list_messages),
            ("/messages/<message_id>", self.get_message),
            ("/threads/<thread_id>", self.get_thread),
            ("/history", self.list_history),
        ):
            app.add_url_rule(base + rule, view.__name__, view, methods=["GET"])

    def get_profile(self, user_id: str) -> Response:
        with self.ctx.lock:
            mailbox = _begin_call(self.ctx, "gmail.users.getProfile", user_id)
            QueryArgs(request.args, frozenset())
            body = {
                "emailAddress": mailbox.email,
                "messagesTotal": len(mailbox.messages),
                "threadsTotal": mailbox.thread_count,
                "historyId": str(mailbox.history_id),
            }
        return json_response(body)

    def list_messages(self, user_id: str) -> Response:
        with self.ctx.lock:
            mailbox = _begin_call(self.ctx, "gmail.messages.list", user_id)
            query = _ListQuery.parse(QueryArgs(request.args, _LIST_ARGS))
            page, next_key = mailbox.list_page(
                query.label_ids, query.include_spam_trash, query.before, query.limit
            )
            estimate = mailbox.estimate(query.label_ids, query.include_spam_trash)
        return json_response(_list_body(page, next_key, estimate))

    def get_message(self, user_id: str, message_id: str) -> Response:
        with self.ctx.lock:
            mailbox = _begin_call(self.ctx, "gmail.messages.get", user_id)
            args = QueryArgs(request.args, _GET_ARGS)
            fmt = _message_format(args)
            message = mailbox.messages.get(message_id)
            if message is None:
                raise not_found()
            body = message_body(message, fmt, args.strings("metadataHeaders"))
            self.ctx.record_fetch(mailbox.email, [message.id])
        return json_response(body)

    def get_thread(self, user_id: str, thread_id: str) -> Response:
        with self.ctx.lock:
            mailbox = _begin_call(self.ctx, "gmail.threads.get", user_id)
            args = QueryArgs(request.args, _GET_ARGS)
            fmt = _message_format(args)
            try:
                messages = mailbox.thread(thread_id)
            except KeyError:
                raise not_found() from None
            body = _thread_body(thread_id, messages, fmt, args.strings("metadataHeaders"))
            self.ctx.record_fetch(mailbox.email, [m.id for m in messages])
        return json_response(body)

    def list_history(self, user_id: str) -> Response:
        with self.ctx.lock:
            mailbox = _begin_call(self.ctx, "gmail.history.list", user_id)
            query = _HistoryQuery.parse(QueryArgs(request.args, _HISTORY_ARGS))
            try:
                page, next_after = mailbox.history_page(
                    query.start, query.types, query.label_id, query.after, query.limit
                )
            except HistoryExpiredError:
                raise not_found() from None
            body = _history_list_body(page, next_after, mailbox.history_id)
        return json_response(body)


@dataclass(frozen=True)
class _ListQuery:
    """messages.list's parameters, checked in the order Gmail checks them."""

    limit: int
    label_ids: list[str]
    include_spam_trash: bool
    before: tuple[int, int, str] | None

    @classmethod
    def parse(cls, args: QueryArgs) -> _ListQuery:
        if "q" in args:
            raise forbidden("Metadata scope does not support 'q' parameter")
        limit = args.integer("maxResults", DEFAULT_PAGE, MAX_PAGE)
        label_ids = args.strings("labelIds")
        include_spam_trash = args.boolean("includeSpamTrash", False)
        token = args.string("pageToken")
        before = None
        if token:
            ms, seq, message_id = decode_token(token, "m", 4)
            if not (isinstance(ms, int) and isinstance(seq, int) and isinstance(message_id, str)):
                raise bad_request("Invalid pageToken")
            before = (ms, seq, message_id)
        return cls(limit, label_ids, include_spam_trash, before)


@dataclass(frozen=True)
class _HistoryQuery:
    """history.list's parameters, checked in the order Gmail checks them."""

    start: int
    types: list[str]
    limit: int
    after: int | None
    label_id: str | None

    @classmethod
    def parse(cls, args: QueryArgs) -> _HistoryQuery:
        start = args.uint64("startHistoryId")
        if start is None:
            raise bad_request("Required parameter: startHistoryId")
        types = args.strings("historyTypes")
        for kind in types:
            if kind not in HISTORY_TYPES:
                raise bad_request(f"Invalid value at 'history_types', \"{kind}\"")
        limit = args.integer("maxResults", DEFAULT_PAGE, MAX_PAGE)
        token = args.string("pageToken")
        after = None
        if token:
            (value,) = decode_token(token, "h", 2)
            if not isinstance(value, int):
                raise bad_request("Invalid pageToken")
            after = value
        return cls(start, types, limit, after, args.string("labelId"))


def _list_body(
    page: list[StoredMessage], next_key: tuple[int, int, str] | None, estimate: int
) -> dict[str, object]:
    body: dict[str, object] = {}
    if page:
        body["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
    if next_key is not None:
        body["nextPageToken"] = encode_token("m", *next_key)
    body["resultSizeEstimate"] = estimate
    return body


def _thread_body(
    thread_id: str, messages: list[StoredMessage], fmt: str, header_names: list[str]
) -> dict[str, object]:
    return {
        "id": thread_id,
        "historyId": str(max(m.history_id for m in messages)),
        "messages": [message_body(m, fmt, header_names) for m in messages],
    }


def _history_list_body(
    page: list[HistoryRecord], next_after: int | None, history_id: int
) -> dict[str, object]:
    body: dict[str, object] = {}
    if page:
        body["history"] = [_history_body(record) for record in page]
    if next_after is not None:
        body["nextPageToken"] = encode_token("h", next_after)
    body["historyId"] = str(history_id)
    return body
