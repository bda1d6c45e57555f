"""A local, stateful stand-in for Google OAuth 2.0 and the Gmail API v1, as a real HTTP server.

google-api-python-client, google-auth and google-auth-oauthlib work against it unchanged when
pointed at its URL (`client_config()`, `token_uri`, `api_endpoint`, and the batch URI
`f"{url}/batch/gmail/v1"`). Mail is headers only, as maillink reads it with `gmail.metadata`.

    with GoogleSandbox() as google:
        google.add_mailbox("rep@example.com")
        google.add_message("rep@example.com", headers=[("Subject", "Hi")], internal_date=now)
        token = google.issue_refresh_token("rep@example.com")
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from maillink.sandbox._server import FaultPlan, Meter, ServerThread, install_faults
from maillink.sandbox.google.batch import INNER_FLAG, RESET_FLAG, register_batch_route
from maillink.sandbox.google.delegation import Workspace, WorkspaceControls
from maillink.sandbox.google.directory import register_directory_routes
from maillink.sandbox.google.errors import GoogleApiError
from maillink.sandbox.google.gmail import GmailContext, QuotaBuckets, register_gmail_routes
from maillink.sandbox.google.mailbox import Mailbox
from maillink.sandbox.google.oauth import (
    SCOPE_METADATA,
    Grant,
    OAuthState,
    check_scopes,
    register_oauth_routes,
)
from maillink.sandbox.google.push import CERTS_PATH, PubSubPush, register_push_routes

__all__ = ["SCOPE_METADATA", "GoogleSandbox"]

_ID_BASE = 0x18C0_0000_0000_0000  # ids look like Gmail's: 16 hex digits
_USER_IN_PATH = re.compile(r"^/gmail/v1/users/(?P<user>[^/]+)/")


def _key(email: str) -> str:
    return email.strip().lower()


class GoogleSandbox:
    """Google OAuth + Gmail API on 127.0.0.1, with mailboxes, consent, faults and a meter."""

    def __init__(
        self,
        *,
        client_id: str = "sandbox-client",
        client_secret: str = "sandbox-secret",
        quota_units_per_second: float | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.url = ""
        self.faults = FaultPlan()
        self.meter = Meter()
        self._lock = threading.RLock()
        self._mailboxes: dict[str, Mailbox] = {}
        self._oauth = OAuthState(client_id, client_secret)
        self._consent_as: str | None = None
        self._seq = itertools.count(1)
        quota = None if quota_units_per_second is None else QuotaBuckets(quota_units_per_second)
        self._context = GmailContext(self._lock, self._mailboxes, self._oauth, self.meter, quota)
        # users.watch / users.stop and Pub/Sub's signed pushes (`push.subscribe(topic, url)`).
        self.push = PubSubPush()
        # Google Workspace: directory, service accounts, domain-wide delegation (JWT bearer).
        self._workspace = Workspace(lambda: self.token_uri)
        self.workspace = WorkspaceControls(
            self._lock,
            self._workspace,
            ensure_mailbox=self._ensure_mailbox,
            revoke_email=self._oauth.revoke_email,
        )
        self._in_flight: Counter[str] = Counter()
        self._max_in_flight: Counter[str] = Counter()
        self.app = self._build_app()
        self._server: ServerThread | None = None

    # --- server --------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask(f"{__name__}.{id(self)}")
        register_oauth_routes(
            app,
            self._oauth,
            self._lock,
            self.meter,
            self._consenting_mailbox,
            self._workspace.assertion_grant,
        )
        register_directory_routes(app, self._workspace, self._oauth, self._lock, self.meter)
        register_gmail_routes(app, self._context)
        register_batch_route(app, self.meter)
        register_push_routes(app, self._context, self.push)

        @app.errorhandler(GoogleApiError)
        def google_error(error: GoogleApiError) -> Response:
            return error.response()

        @app.errorhandler(HTTPException)
        def http_error(error: HTTPException) -> Response:
            code = error.code or 500
            reason = "notFound" if code == 404 else "badRequest"
            return GoogleApiError(code, error.description or error.name, reason).response()

        @app.errorhandler(Exception)
        def internal_error(error: Exception) -> Response:
            app.logger.exception("sandbox error")
            return GoogleApiError(500, "Internal error encountered.", "backendError").response()

        install_faults(app, self.faults, self.meter)
        _count_http(app, self.meter)
        self._track_in_flight(app)
        return app

    def _track_in_flight(self, app: Flask) -> None:
        """Record, per mailbox, how many API requests were in flight at once (outermost, so an
        injected delay counts as in flight; a batch counts once, its parts are inside it)."""
        inner = app.wsgi_app

        def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            mailbox = None if environ.get(INNER_FLAG) else self._mailbox_of(environ)
            if mailbox is None:
                return inner(environ, start_response)
            with self._lock:
                self._in_flight[mailbox] += 1
                self._max_in_flight[mailbox] = max(
                    self._max_in_flight[mailbox], self._in_flight[mailbox]
                )
            try:
                return inner(environ, start_response)
            finally:
                with self._lock:
                    self._in_flight[mailbox] -= 1

        app.wsgi_app = middleware  # type: ignore[method-assign]

    def _mailbox_of(self, environ: dict[str, Any]) -> str | None:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            with self._lock:
                grant = self._oauth.grant_for(token.strip())
            if grant is not None:
                return grant.email
        named = _USER_IN_PATH.match(environ.get("PATH_INFO", ""))
        if named and named["user"] != "me":
            return _key(named["user"])
        return None

    def max_concurrency(self, email: str) -> int:
        """The most API requests for this mailbox that were ever in flight at the same time
        (1 when its clients never overlapped; 0 when it was never called)."""
        with self._lock:
            return self._max_in_flight[_key(email)]

    def message_fetches(self) -> list[tuple[str, str, str]]:
        """Every message whose headers were served, in order: (mailbox, message id, fetcher),
        where the fetcher is a digest of the access token used (each daemon process refreshes
        its own, so two fetchers of one message are two processes, or one that reconnected)."""
        with self._lock:
            return [(_key(box), message_id, who) for box, message_id, who in self._context.fetches]

    def fetched_twice(self) -> dict[tuple[str, str], int]:
        """Messages whose headers were served more than once, with how many times."""
        counted = Counter((box, message_id) for box, message_id, _ in self.message_fetches())
        return {message: n for message, n in counted.items() if n > 1}

    def fetched_by_several(self) -> dict[tuple[str, str], set[str]]:
        """Messages whose headers were served to more than one client (access token)."""
        who: dict[tuple[str, str], set[str]] = {}
        for box, message_id, fetcher in self.message_fetches():
            who.setdefault((box, message_id), set()).add(fetcher)
        return {message: fetchers for message, fetchers in who.items() if len(fetchers) > 1}

    def start(self) -> GoogleSandbox:
        if self._server is not None:
            raise RuntimeError("the Google sandbox is already running")
        self._server = ServerThread(self.app).start()
        self.url = self._server.url
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        # serve_forever notices the shutdown only between polls (0.5 s); a connection wakes it.
        address = urlsplit(self.url)
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((address.hostname, address.port), timeout=0.2).close()
            stopper.join(0.02)

    def __enter__(self) -> GoogleSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def auth_uri(self) -> str:
        return f"{self.url}/o/oauth2/auth"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def revoke_uri(self) -> str:
        return f"{self.url}/revoke"

    @property
    def api_endpoint(self) -> str:
        return self.url

    @property
    def directory_endpoint(self) -> str:
        """The Admin SDK's base URL ([gmail] directory_endpoint)."""
        return self.url

    @property
    def batch_uri(self) -> str:
        return f"{self.url}/batch/gmail/v1"

    @property
    def certs_url(self) -> str:
        """Where the push requests' signing certificates are (Google's oauth2/v1/certs)."""
        return f"{self.url}{CERTS_PATH}"

    def client_config(self) -> dict[str, dict[str, Any]]:
        """The client file Google Cloud gives for a desktop (installed) app."""
        return {
            "installed": {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "auth_uri": self.auth_uri,
                "token_uri": self.token_uri,
                "redirect_uris": ["http://127.0.0.1"],
            }
        }

    # --- mailboxes and consent -----------------------------------------------------------

    def add_mailbox(self, email: str, aliases: tuple[str, ...] = ()) -> None:
        with self._lock:
            if _key(email) in self._mailboxes:
                raise ValueError(f"mailbox {email} already exists")
            self._mailboxes[_key(email)] = Mailbox(email.strip(), tuple(aliases))

    def _ensure_mailbox(self, email: str) -> None:
        with self._lock:
            if _key(email) not in self._mailboxes:
                self._mailboxes[_key(email)] = Mailbox(email.strip(), ())

    def aliases(self, email: str) -> tuple[str, ...]:
        with self._lock:
            return self._mailbox(email).aliases

    @property
    def consent_as(self) -> str | None:
        """The mailbox the next authorization signs in as; None makes the user deny consent."""
        return self._consent_as

    @consent_as.setter
    def consent_as(self, email: str | None) -> None:
        if email is not None:
            self._mailbox(email)
        self._consent_as = email

    def _consenting_mailbox(self) -> str | None:
        return None if self._consent_as is None else _key(self._consent_as)

    def issue_refresh_token(self, email: str, scopes: Iterable[str] = (SCOPE_METADATA,)) -> str:
        """A refresh token as if `email` had consented to `scopes` (for tests that skip consent)."""
        granted = tuple(scopes)
        check_scopes(granted)
        with self._lock:
            self._mailbox(email)
            return self._oauth.issue_refresh_token(Grant(_key(email), granted, self.client_id))

    def revoke(self, email: str) -> None:
        """Its refresh tokens now get invalid_grant, its access tokens 401."""
        with self._lock:
            self._mailbox(email)
            self._oauth.revoke_email(_key(email))

    def expire_access_tokens(self, email: str) -> None:
        """Its access tokens now get 401 (refresh tokens still work), as after an hour."""
        with self._lock:
            self._oauth.expire_access_tokens(_key(email))

    # --- mail ----------------------------------------------------------------------------

    def add_message(
        self,
        email: str,
        *,
        headers: list[tuple[str, str]],
        internal_date: datetime,
        thread_id: str | None = None,
        label_ids: tuple[str, ...] = ("INBOX",),
        snippet: str = "",
        size_estimate: int | None = None,
    ) -> str:
        """Deliver a message (headers only); returns its id. A naive `internal_date` is UTC."""
        if internal_date.tzinfo is None:
            internal_date = internal_date.replace(tzinfo=UTC)
        header_list = [(str(name), str(value)) for name, value in headers]
        if size_estimate is None:
            size_estimate = sum(len(n) + len(v) + 4 for n, v in header_list) + len(snippet) + 2
        with self._lock:
            mailbox = self._mailbox(email)
            seq = next(self._seq)
            message = mailbox.add(
                format(_ID_BASE + seq, "x"),
                seq,
                headers=header_list,
                internal_ms=int(internal_date.timestamp() * 1000),
                thread_id=thread_id,
                label_ids=label_ids,
                snippet=snippet,
                size_estimate=size_estimate,
            )
            self.push.changed(_key(email), mailbox.history_id, label_ids)
            return message.id

    def delete_message(self, email: str, message_id: str) -> None:
        self._change(email, lambda mailbox: mailbox.delete(message_id))

    def add_labels(self, email: str, message_id: str, label_ids: tuple[str, ...]) -> None:
        self._change(email, lambda mailbox: mailbox.add_labels(message_id, label_ids))
        self.push.changed(_key(email), self.history_id(email), label_ids)

    def remove_labels(self, email: str, message_id: str, label_ids: tuple[str, ...]) -> None:
        self._change(email, lambda mailbox: mailbox.remove_labels(message_id, label_ids))

    def expire_history(self, email: str) -> None:
        """history.list from any start id older than the current one now answers 404."""
        self._change(email, Mailbox.expire_history)

    def message_count(self, email: str) -> int:
        with self._lock:
            return len(self._mailbox(email).messages)

    def history_id(self, email: str) -> int:
        with self._lock:
            return self._mailbox(email).history_id

    def _change(self, email: str, change: Callable[[Mailbox], None]) -> None:
        with self._lock:
            change(self._mailbox(email))

    def _mailbox(self, email: str) -> Mailbox:
        try:
            return self._mailboxes[_key(email)]
        except KeyError:
            raise KeyError(f"no mailbox {email} in the Google sandbox") from None


def _count_http(app: Flask, meter: Meter) -> None:
    """Count every HTTP request received as "http" (a batch once), outside fault injection."""
    inner = app.wsgi_app

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get(INNER_FLAG):
            return inner(environ, start_response)
        meter.count("http")
        result = inner(environ, start_response)
        if environ.get(RESET_FLAG):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise ConnectionAbortedError("sandbox: injected connection reset in a batch")
        return result

    app.wsgi_app = middleware  # type: ignore[method-assign]
