"""The daemon's HTTP endpoint: /healthz, /metrics, the Pipedrive webhook, the Gmail push.

    GET  /healthz                 200 when the store answers and the daemon's loop is alive
    GET  /metrics                 Prometheus text format
    POST /webhooks/pipedrive      Pipedrive webhooks v2, HTTP basic auth (credentials.json webhook)
    POST /webhooks/hubspot        HubSpot webhooks of the public app, signed (v3) with its client
                                  secret (credentials.json hubspot.client_secret)
    POST /push/gmail              Gmail Pub/Sub push: its OIDC token (credentials.json
                                  gmail_push.service_account), or ?token=… (gmail_push.token)
    POST /push/graph              Graph change and lifecycle notifications ([microsoft]
                                  notification_url): the validation handshake, then batches
                                  whose clientState matches the subscription's

Errors are short JSON bodies, never a traceback. Bodies are capped (MAX_BODY_BYTES: 413 above it)
and their JSON must nest less than MAX_JSON_DEPTH deep (400 otherwise). Gmail's watches are
made by the daemon itself (`maillink.push.gmail_watch`); docs/operations.md says which URLs to
give Pipedrive and the Pub/Sub push subscription.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from maillink.config import WebhookCredentials
from maillink.crm.hubspot_webhooks import (
    SIGNED_HEADERS,
    BadEvents,
    HubSpotWebhooks,
    SignatureRefused,
    parse_events,
)
from maillink.ops.metrics import Metrics
from maillink.ops.webhooks import (
    BadPayload,
    RecentIds,
    forget,
    gmail_push,
    parse_json,
    pipedrive_change,
    stale_push,
)
from maillink.providers.base import ProviderError
from maillink.providers.gmail_cursor import GmailCursor
from maillink.push.graph_subscriptions import GraphNotifications, parse_notifications
from maillink.push.pubsub_auth import CertificatesUnavailable, PushRefused, PushVerifier
from maillink.store import Store, accounts

log = logging.getLogger("maillink.ops")
MAX_BODY_BYTES = 256 * 1024  # a webhook or push body is a few KB; anything larger is refused
MAX_VALIDATION_TOKEN = 4096  # Graph's validationToken is an opaque string of a few hundred bytes


class BodyTooLarge(Exception):
    """The request body is larger than MAX_BODY_BYTES (413)."""


@dataclass
class OpsContext:
    """What the endpoint needs from the daemon."""

    store: Store
    metrics: Metrics
    webhook: WebhookCredentials | None = None
    hubspot_webhooks: HubSpotWebhooks | None = None  # a HubSpot public app is configured
    gmail_push_token: str | None = None
    gmail_push_verifier: PushVerifier | None = None  # the OIDC token of Pub/Sub's pushes
    gmail_push_seen: RecentIds = field(default_factory=RecentIds)  # message ids: replays
    graph_notifications: GraphNotifications | None = None  # [microsoft] notification_url set
    wake: Callable[[int], None] = lambda account_id: None  # make a mailbox due now
    status: Callable[[], dict[str, Any]] = dict  # the daemon's own state for /healthz
    alive: Callable[[], bool] = lambda: True  # False when the daemon's loop has stalled


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _error(status: int, message: str, **headers: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    response.headers.update(headers)
    return response


def _json_body() -> Any:
    """The request's JSON body, read up to MAX_BODY_BYTES: a declared length above it is refused
    before reading, a chunked body as soon as it passes it. `BadPayload` when not JSON."""
    return parse_json(_raw_body())


def _raw_body() -> bytes:
    """The request's body as sent (a signature covers these bytes), at most MAX_BODY_BYTES."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise BodyTooLarge
    body = bytearray()
    while len(body) <= MAX_BODY_BYTES:
        part = request.stream.read(MAX_BODY_BYTES + 1 - len(body))
        if not part:
            break
        body += part
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLarge
    return bytes(body)


def create_ops_app(ctx: OpsContext) -> Flask:
    app = Flask("maillink.ops")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.get("/healthz")
    def healthz() -> Response:
        body: dict[str, Any] = dict(ctx.status())
        try:
            ctx.store.ping()
            body["database"] = "ok"
        except SQLAlchemyError:
            body["database"] = "unreachable"
        alive = ctx.alive()
        body["loop"] = "ok" if alive else "stalled"
        healthy = alive and body["database"] == "ok"
        body["status"] = "ok" if healthy else "unhealthy"
        response = jsonify(body)
        response.status_code = 200 if healthy else 503
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(ctx.metrics.render(), mimetype=CONTENT_TYPE_LATEST)

    @app.post("/webhooks/pipedrive")
    def pipedrive_webhook() -> Response:
        if ctx.webhook is None:
            return _error(404, "the Pipedrive webhook is not configured (credentials.json webhook)")
        auth = request.authorization
        if (
            auth is None
            or auth.type != "basic"
            or not _same(auth.username or "", ctx.webhook.username)
            or not _same(auth.password or "", ctx.webhook.password)
        ):
            return _error(401, "unauthorized", **{"WWW-Authenticate": 'Basic realm="maillink"'})
        try:
            change = pipedrive_change(_json_body())
        except BadPayload as exc:
            return _error(400, str(exc))
        if change is None or change.empty:
            return jsonify({"ok": True, "ignored": True})
        with ctx.store.transaction() as conn:
            forget(conn, change)
        ctx.metrics.crm_changes.labels("webhook").inc()
        log.info(
            "pipedrive %s %s %s: cached facts forgotten",
            change.entity,
            change.action,
            change.entity_id,
            extra={
                "event": "crm_change",
                "persons": sorted(change.person_ids),
                "all_items": change.everyone,
            },
        )
        return jsonify(
            {
                "ok": True,
                "persons": len(change.person_ids),
                "emails": len(change.emails),
                "all_items": change.everyone,
            }
        )

    @app.post("/webhooks/hubspot")
    def hubspot_webhook() -> Response:
        receiver = ctx.hubspot_webhooks
        if receiver is None:
            return _error(404, "HubSpot webhooks are not configured (credentials.json hubspot)")
        body = _raw_body()
        query = request.query_string.decode("latin-1")
        try:
            receiver.verify(
                request.method,
                request.url,
                request.path + (f"?{query}" if query else ""),
                body,
                {name: request.headers.get(name, "") for name in SIGNED_HEADERS},
            )
        except SignatureRefused as exc:
            log.info("hubspot webhook refused: %s", exc, extra={"event": "webhook_refused"})
            return _error(401, "unauthorized")
        try:
            changes = receiver.changes(parse_events(parse_json(body)))
        except (BadPayload, BadEvents) as exc:
            return _error(400, str(exc))
        changes = [c for c in changes if not c.empty]
        if changes:
            with ctx.store.transaction() as conn:
                for change in changes:
                    forget(conn, change)
            ctx.metrics.crm_changes.labels("webhook").inc(len(changes))
        log.info(
            "hubspot webhook: %d change(s), cached facts forgotten",
            len(changes),
            extra={
                "event": "crm_change",
                "persons": sorted({p for c in changes for p in c.person_ids}),
                "all_items": any(c.everyone for c in changes),
            },
        )
        return Response(status=204)

    def gmail_push_refused() -> Response | None:
        """None when the push proves it is Pub/Sub's: a bearer OIDC token that verifies (when
        configured), else the shared token of the URL (the fallback); else the refusal."""
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        verifier = ctx.gmail_push_verifier
        if verifier is not None and scheme.lower() == "bearer" and bearer.strip():
            try:
                verifier.verify(bearer.strip(), (request.url, request.base_url))
            except PushRefused as exc:
                log.info("gmail push refused: %s", exc.reason, extra={"event": "push_refused"})
                if exc.status == 401:
                    challenge = 'Bearer error="invalid_token"'
                    return _error(401, "unauthorized", **{"WWW-Authenticate": challenge})
                return _error(403, "forbidden")
            except CertificatesUnavailable:
                log.warning("gmail push: Google's signing certificates are unavailable")
                return _error(503, "cannot verify the token now; try again")
            return None
        given = request.args.get("token")
        if ctx.gmail_push_token is not None and given is not None:
            return None if _same(given, ctx.gmail_push_token) else _error(403, "forbidden")
        if verifier is not None:
            return _error(401, "unauthorized", **{"WWW-Authenticate": "Bearer"})
        return _error(403, "forbidden")

    @app.post("/push/gmail")
    def gmail_push_endpoint() -> Response:
        if ctx.gmail_push_token is None and ctx.gmail_push_verifier is None:
            return _error(404, "Gmail push is not configured (credentials.json gmail_push)")
        refused = gmail_push_refused()
        if refused is not None:
            return refused
        try:
            push = gmail_push(_json_body())
        except BadPayload as exc:
            return _error(400, str(exc))
        if push.message_id is not None and push.message_id in ctx.gmail_push_seen:
            log.info("gmail push replayed: acknowledged, ignored", extra={"event": "push_replay"})
            return Response(status=204)
        with ctx.store.engine.connect() as conn:
            account = accounts.get(conn, push.email)
            cursor = accounts.get_cursor(conn, account.id) if account is not None else None
        if account is None or account.provider != "gmail" or account.status != accounts.ACTIVE:
            log.info("gmail push for a mailbox not synced here: acknowledged, ignored")
            return Response(status=204)
        try:
            synced = GmailCursor.loads(cursor)
        except ProviderError:
            synced = None
        if stale_push(push.history_id, synced.history_id if synced is not None else None):
            log.info(
                "gmail push already synced: acknowledged, ignored",
                extra={"event": "push_stale", "account_id": account.id},
            )
            return Response(status=204)
        ctx.wake(account.id)
        if push.message_id is not None:
            ctx.gmail_push_seen.add(push.message_id)
        ctx.metrics.wakeups.labels("gmail").inc()
        log.info(
            "gmail push: mailbox due now",
            extra={"event": "wake", "account_id": account.id, "history_id": push.history_id},
        )
        return Response(status=204)

    @app.post("/push/graph")
    @app.post("/push/graph/lifecycle")
    def graph_push_endpoint() -> Response:
        handler = ctx.graph_notifications
        if handler is None:
            return _error(404, "Graph change notifications are not configured")
        token = request.args.get("validationToken")
        if token is not None:  # Graph validates the URL: echo the token, nothing else
            if not token or len(token) > MAX_VALIDATION_TOKEN:
                return _error(400, "the validationToken is empty or too long")
            response = Response(token, status=200, mimetype="text/plain")
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response
        try:
            items = parse_notifications(_json_body())
        except BadPayload as exc:
            return _error(400, str(exc))
        handled = handler.handle(items)
        if handled.woken:
            ctx.metrics.wakeups.labels("graph").inc(len(handled.woken))
        log.info(
            "graph notifications: %d mailbox(es) due now, %d ignored",
            len(handled.woken),
            handled.ignored,
            extra={"event": "wake", "accounts": sorted(handled.woken)},
        )
        return Response(status=202)

    @app.errorhandler(BodyTooLarge)
    @app.errorhandler(RequestEntityTooLarge)
    def too_large(error: Exception) -> Response:
        return _error(413, f"the body is larger than {MAX_BODY_BYTES // 1024} KB")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return _error(error.code or 500, error.name)

    @app.errorhandler(SQLAlchemyError)
    def store_error(error: SQLAlchemyError) -> Response:
        log.warning("ops endpoint: the store failed: %s", type(error).__name__)
        return _error(503, "the store is unavailable; try again")

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> Response:
        log.error("ops endpoint failed: %s", type(error).__name__, exc_info=error)
        return _error(500, "internal error")

    return app


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("ops %s " + message, type, *args)


class OpsServer:
    """Serves the ops app in a background thread; `url` is known once started."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        self._server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=_QuietHandler
        )
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="maillink-ops",
            daemon=True,
        )

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
