"""Microsoft Graph v1.0 stand-in: /me, /users/{id}, messages (list, get), mailFolders message
delta, and JSON $batch — with the shapes, paging annotations and errors of the Graph docs.

Every request on a mailbox counts in that mailbox's in-flight requests; the highest overlap is
recorded (Outlook allows 4 concurrent requests per app and mailbox and answers 429 beyond), and
each request's start time is logged so that tests can see a mailbox pause.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote, urlencode

from flask import Flask, Response, request

from maillink.sandbox._server import Meter
from maillink.sandbox.microsoft.batch import Traffic, run_batch
from maillink.sandbox.microsoft.directory import (
    Directory,
    app_mailbox,
    check_app_mail,
    reads_user,
)
from maillink.sandbox.microsoft.grants import Grant, IdentityState
from maillink.sandbox.microsoft.mailbox import (
    DeltaRound,
    DeltaTokens,
    Entry,
    Mailbox,
    Since,
    StoredMessage,
    TokenExpired,
)
from maillink.sandbox.microsoft.odata import (
    ODataError,
    check_order_with_filter,
    check_readable,
    graph_error,
    matches,
    parse_filter,
    parse_orderby,
    parse_select,
    render_message,
)

_PREFER_PAGE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.IGNORECASE)
_PREFER_IMMUTABLE = re.compile(r'IdType\s*=\s*"?ImmutableId"?', re.IGNORECASE)
_USER = re.compile(r"^(?:me|users/([^/]+)|users\('([^']+)'\))(?:/(.*))?$")
_FOLDER = re.compile(r"^mailFolders(?:/([^/]+)|\('([^']+)'\))(?:/(.*))?$", re.IGNORECASE)


@dataclass
class GraphContext:
    lock: threading.RLock
    mailboxes: dict[str, Mailbox]
    identity: IdentityState
    meter: Meter
    traffic: Traffic
    filtered_cap: int
    latency: float
    base_url: Callable[[], str]  # https://127.0.0.1:PORT (the Graph host)
    tokens: DeltaTokens = field(default_factory=DeltaTokens)
    expired_code: dict[tuple[str, str], str] = field(default_factory=dict)
    directory: Directory = field(default_factory=Directory)

    def mailbox_for(self, grant: Grant, ref: str | None) -> Mailbox:
        if grant.app:  # client credentials: any user by id or address, no `/me`
            return app_mailbox(self, grant, ref)
        with self.lock:
            own = self.mailboxes.get(grant.email)
            if ref is None:
                if own is None:
                    raise ODataError(
                        404,
                        "MailboxNotEnabledForRESTAPI",
                        "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                    )
                return own
            wanted = unquote(ref).lower()
            for box in self.mailboxes.values():
                if wanted in (box.email.lower(), box.user_id):
                    if box is not own:
                        raise ODataError(
                            403,
                            "ErrorAccessDenied",
                            "Access is denied. Check credentials and try again.",
                        )
                    return box
        raise ODataError(404, "Request_ResourceNotFound", f"Resource '{ref}' does not exist.")


def _prefer(name: re.Pattern[str]) -> re.Match[str] | None:
    return name.search(request.headers.get("Prefer", ""))


def register_graph_routes(app: Flask, ctx: GraphContext) -> None:
    @app.errorhandler(ODataError)
    def odata_error(error: ODataError) -> Response:
        return graph_error(error.status, error.code, error.message)

    @app.post("/v1.0/$batch")
    def batch() -> Any:
        ctx.meter.count("graph.batch")
        grant = _authenticate(ctx)
        if isinstance(grant, Response):
            return grant
        return run_batch(app, ctx.meter)

    @app.get("/v1.0/<path:rest>")
    def graph(rest: str) -> Any:
        grant = _authenticate(ctx)
        if isinstance(grant, Response):
            return grant
        match = _USER.match(rest)
        if match is None:
            raise ODataError(
                400, "BadRequest", f"Resource not found for the segment '{rest.split('/')[0]}'."
            )
        ref = match.group(1) or match.group(2)
        mailbox = ctx.mailbox_for(grant, ref)
        with ctx.traffic.request(mailbox.key, rest) as allowed:
            if ctx.latency:
                time.sleep(ctx.latency)
            if not allowed:
                ctx.meter.count("graph.throttled")
                return graph_error(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    headers={"Retry-After": "1"},
                )
            return _dispatch(ctx, grant, mailbox, rest, match.group(3) or "")


def _authenticate(ctx: GraphContext) -> Grant | Response:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    grant = ctx.identity.bearer(token.strip()) if scheme.lower() == "bearer" else None
    if grant is None:
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty."
            if not header
            else "Access token has expired or is not yet valid.",
        )
    return grant


def _dispatch(ctx: GraphContext, grant: Grant, mailbox: Mailbox, rest: str, tail: str) -> Any:
    if tail == "":
        ctx.meter.count("graph.user")
        if not reads_user(grant):
            raise ODataError(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        return _user(ctx, mailbox, rest)
    if grant.app:
        check_app_mail(ctx, grant, mailbox)
    elif not {"Mail.ReadBasic", "Mail.Read"}.intersection(grant.scopes):
        raise ODataError(
            403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
        )
    if not mailbox.exchange:
        raise ODataError(
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        )
    if tail == "messages":
        ctx.meter.count("graph.messages")
        return _list(ctx, grant, mailbox, None, rest)
    if tail.startswith("messages/"):
        ctx.meter.count("graph.message")
        return _get(ctx, grant, mailbox, unquote(tail[len("messages/") :]))
    folder_match = _FOLDER.match(tail)
    if folder_match is not None:
        ref = unquote(folder_match.group(1) or folder_match.group(2))
        with ctx.lock:
            folder = mailbox.folder_name(ref)
        if folder is None:
            raise ODataError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        sub = (folder_match.group(3) or "").lower()
        if sub == "messages/delta":
            ctx.meter.count("graph.delta")
            return _delta(ctx, grant, mailbox, folder, rest)
        if sub == "messages":
            ctx.meter.count("graph.messages")
            return _list(ctx, grant, mailbox, folder, rest)
    raise ODataError(
        400, "BadRequest", f"Resource not found for the segment '{tail.split('/')[0]}'."
    )


def _context_url(ctx: GraphContext, what: str) -> str:
    return f"{ctx.base_url()}/v1.0/$metadata#{what}"


def _user(ctx: GraphContext, mailbox: Mailbox, rest: str) -> Any:
    first, _, last = mailbox.display_name.partition(" ")
    user: dict[str, Any] = {
        "businessPhones": [],
        "displayName": mailbox.display_name,
        "givenName": first or None,
        "jobTitle": None,
        "mail": mailbox.email,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US",
        "surname": last or None,
        "userPrincipalName": mailbox.email,
        "id": mailbox.user_id,
    }
    select = request.args.get("$select")
    if select:
        wanted = [s.strip() for s in select.split(",") if s.strip()]
        user = {k: v for k, v in user.items() if k in wanted or k == "id"}
    return {"@odata.context": _context_url(ctx, "users/$entity"), **user}


def _get(ctx: GraphContext, grant: Grant, mailbox: Mailbox, ref: str) -> Any:
    select = parse_select(request.args.get("$select"))
    check_readable(select, grant.scopes)
    with ctx.lock:
        message = mailbox.find(ref)
        if message is None:
            raise ODataError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        body = render_message(message, select, immutable=_prefer(_PREFER_IMMUTABLE) is not None)
    body.pop("@odata.type", None)
    return {"@odata.context": _context_url(ctx, "users/messages/$entity"), **body}


def _list(ctx: GraphContext, grant: Grant, mailbox: Mailbox, folder: str | None, rest: str) -> Any:
    args = request.args
    select = parse_select(args.get("$select"))
    check_readable(select, grant.scopes)
    tree = parse_filter(args.get("$filter"))
    order = parse_orderby(args.get("$orderby"))
    check_order_with_filter(order, tree)
    try:
        top = int(args.get("$top", "10"))
        skip = int(args.get("$skip", "0"))
    except ValueError:
        raise ODataError(400, "BadRequest", "Invalid $top or $skip") from None
    if not 1 <= top <= 1000:
        raise ODataError(
            400, "ErrorInvalidParameter", "The value of $top must be between 1 and 1000."
        )
    immutable = _prefer(_PREFER_IMMUTABLE) is not None
    with ctx.lock:
        found = [
            m
            for m in mailbox.messages.values()
            if not m.deleted and (folder is None or m.folder == folder) and matches(tree, m)
        ]
        for prop, descending in reversed(order or [("receivedDateTime", True)]):
            found.sort(key=_sort_key(prop), reverse=descending)
        page = [render_message(m, select, immutable=immutable) for m in found[skip : skip + top]]
    for item in page:
        item.pop("@odata.type", None)
    body: dict[str, Any] = {"@odata.context": _context_url(ctx, "users/messages"), "value": page}
    if args.get("$count", "").lower() == "true":
        body["@odata.count"] = len(found)
    if skip + top < len(found):
        query = {k: v for k, v in args.items() if k != "$skip"}
        query["$skip"] = str(skip + top)
        body["@odata.nextLink"] = (
            f"{ctx.base_url()}/v1.0/{rest}?{urlencode(query, quote_via=quote, safe='$')}"
        )
    return body


def _sort_key(prop: str) -> Callable[[StoredMessage], tuple[bool, Any]]:
    def key(message: StoredMessage) -> tuple[bool, Any]:
        value = message.props.get(prop)
        return (value is None, value if value is not None else "")

    return key


def _page_size() -> int:
    match = _prefer(_PREFER_PAGE)
    return max(1, min(1000, int(match.group(1)))) if match else 10


def _delta(ctx: GraphContext, grant: Grant, mailbox: Mailbox, folder: str, rest: str) -> Any:
    args = request.args
    size = _page_size()
    immutable = _prefer(_PREFER_IMMUTABLE) is not None
    owner = re.split("/mailFolders", rest, maxsplit=1, flags=re.IGNORECASE)[0]
    links = f"{ctx.base_url()}/v1.0/{owner}/mailFolders('{quote(folder)}')/messages/delta"
    with ctx.lock:
        try:
            round_, offset = _round(ctx, grant, mailbox, folder, args)
        except TokenExpired:
            code = ctx.expired_code.get((mailbox.key, folder), "syncStateNotFound")
            return graph_error(
                410,
                code,
                "The sync state generation is not found or has expired: start a new sync.",
                headers={"Location": f"{links}?$deltatoken="},
            )
        entries = round_.entries[offset : offset + size]
        shown = list(entries)
        if folder in mailbox.replay:
            mailbox.replay.discard(folder)
            shown = mailbox.last_page.get(folder, []) + shown
        mailbox.last_page[folder] = list(entries)
        value = [_render_entry(mailbox, round_, entry, immutable) for entry in shown]
        body: dict[str, Any] = {
            "@odata.context": _context_url(ctx, "Collection(message)"),
            "value": value,
        }
        if offset + size < len(round_.entries):
            body["@odata.nextLink"] = f"{links}?$skiptoken={ctx.tokens.skip(round_, offset + size)}"
        else:
            body["@odata.deltaLink"] = f"{links}?$deltatoken={ctx.tokens.delta(round_)}"
    applied = [f"odata.maxpagesize={size}"] + (['IdType="ImmutableId"'] if immutable else [])
    return Response(
        json.dumps(body),
        mimetype="application/json",
        headers={"Preference-Applied": ", ".join(applied)},
    )


def _round(
    ctx: GraphContext, grant: Grant, mailbox: Mailbox, folder: str, args: Any
) -> tuple[DeltaRound, int]:
    skiptoken, deltatoken = args.get("$skiptoken"), args.get("$deltatoken")
    if skiptoken:
        round_, offset = ctx.tokens.page(skiptoken)
        if round_.mailbox != mailbox.key or round_.generation != mailbox.generation(folder):
            raise TokenExpired(skiptoken)
        return round_, offset
    if deltatoken:
        state = ctx.tokens.state(deltatoken)
        if state.mailbox != mailbox.key or state.folder != folder:
            raise TokenExpired(deltatoken)
        return mailbox.next_round(state), 0
    select = parse_select(args.get("$select"))
    check_readable(select, grant.scopes)
    since = _delta_filter(args.get("$filter"))
    orderby = parse_orderby(args.get("$orderby"))
    if orderby and orderby != [("receivedDateTime", True)]:
        raise ODataError(
            400, "BadRequest", "The only $orderby supported by delta is receivedDateTime desc."
        )
    return mailbox.initial_round(folder, select, since, ctx.filtered_cap), 0


def _delta_filter(text: str | None) -> Since | None:
    """Delta takes only `receivedDateTime ge|gt {value}` (delta-query-messages)."""
    tree = parse_filter(text)
    if tree is None:
        return None
    prop, op, value = (
        getattr(tree, "prop", None),
        getattr(tree, "op", None),
        getattr(tree, "value", None),
    )
    if prop != "receivedDateTime" or op not in ("ge", "gt") or not isinstance(value, datetime):
        raise ODataError(
            400,
            "BadRequest",
            "The only $filter supported by delta is receivedDateTime ge|gt {value}.",
        )
    return Since(str(op), value)


def _render_entry(
    mailbox: Mailbox, round_: DeltaRound, entry: Entry, immutable: bool
) -> dict[str, Any]:
    message = mailbox.messages[entry.message_id]
    if entry.kind == "removed":
        return {
            "@odata.type": "#microsoft.graph.message",
            "id": message.id if immutable else message.regular_id(),
            "@removed": {"reason": entry.reason},
        }
    only = entry.changed if entry.kind == "partial" else None
    return render_message(message, round_.select, immutable=immutable, only=only)
