"""The Gmail API calls maillink makes (gmail.metadata scope), metered and run under the policy.

Every call Gmail answered is counted in quota units (Google's per-call model, [gmail] quota_model;
an error answer counts too), and every HTTP request at the transport, token refreshes included. Batches go to the batch endpoint built from
the configured API endpoint, since the client library would take Google's from its discovery
document.

A mailbox costs little while idle: the API description is parsed once per process, trimmed to the
calls below and shared by every mailbox's client (`api_description`); the client library's
objects are built at a round's first call and dropped when the round ends (`GmailApi.release`),
and the connections are lent to the round by one pool per process (`CONNECTIONS`), so an idle
mailbox holds only its credentials and counters. The access token is refreshed at the first
request that needs it (`google_token`), under the same policy as a call.
"""

from __future__ import annotations

import copy
import http.client
import json
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httplib2
from google.auth import exceptions as auth_exceptions
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest

from maillink.http_policy import (
    CONNECTION,
    GMAIL,
    INVALID_GRANT,
    TIMEOUT,
    TRANSIENT,
    Failure,
    parse_retry_after,
)
from maillink.providers.google_token import (
    GoogleCredentials,
    TokenRefused,
    due,
    refresh,
    spread,
)
from maillink.providers.pacing import GMAIL_UNITS, Pacer
from maillink.providers.retry import RetryPolicy

SCOPE_METADATA = "https://www.googleapis.com/auth/gmail.metadata"
METADATA_HEADERS = (
    "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
)  # fmt: skip
UNITS = GMAIL_UNITS["2025"]
HISTORY_TYPES = ("messageAdded", "labelAdded", "messageDeleted")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# The methods maillink calls, by resource of `users`; the shared description keeps only these
# (watch and stop: Gmail push, `maillink.push.gmail_watch`).
USED_METHODS: dict[str, tuple[str, ...]] = {
    "": ("getProfile", "watch", "stop"),
    "messages": ("list", "get"),
    "threads": ("get",),
    "history": ("list",),
}

_description: dict[str, Any] | None = None
_description_lock = threading.Lock()


def api_description() -> dict[str, Any]:
    """Gmail v1's discovery document, parsed once per process and shared by every client.

    Trimmed to `USED_METHODS` and the schemas they name, and warmed up once: the client library
    adds the root parameters to each method's description the first time it builds it, so that
    later builds, from any thread, change nothing in it.
    """
    global _description
    with _description_lock:
        if _description is None:
            text = get_static_doc("gmail", "v1")
            if text is None:
                raise RuntimeError("googleapiclient ships no Gmail v1 discovery document")
            description = _trimmed(json.loads(text))
            users = build_from_document(
                description, http=httplib2.Http(), client_options={"api_endpoint": "https://x/"}
            ).users()
            for name in USED_METHODS:
                if name:
                    getattr(users, name)()
            _description = description
        return _description


def _trimmed(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with only the `users` methods of `USED_METHODS` and the schemas they use."""
    users = document["resources"]["users"]
    trimmed_users: dict[str, Any] = {
        "methods": {m: users["methods"][m] for m in USED_METHODS[""]},
        "resources": {
            name: {"methods": {m: users["resources"][name]["methods"][m] for m in methods}}
            for name, methods in USED_METHODS.items()
            if name
        },
    }
    schemas: dict[str, Any] = document.get("schemas", {})
    needed: set[str] = set()
    pending = [trimmed_users]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref not in needed and ref in schemas:
                needed.add(ref)
                pending.append(schemas[ref])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    result = {k: v for k, v in document.items() if k not in ("resources", "schemas")}
    result["resources"] = {"users": copy.deepcopy(trimmed_users)}
    result["schemas"] = {name: schemas[name] for name in sorted(needed)}
    return result


def check_endpoint(url: str, what: str) -> str:
    """`url` if it is https, or plain http to a loopback host (the sandbox, a test double)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if parts is not None and host and parts.scheme == "https":
        return url
    if parts is not None and parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return url
    raise ValueError(
        f"{what} {url!r} is refused: use https (plain http only for a loopback host: "
        "127.0.0.1, ::1 or localhost)"
    )


class MalformedAnswer(Exception):
    """Gmail answered 2xx with a body that is not the JSON object asked for (cut short, garbled).

    Transient: taken as an empty answer, a listing would end early and a message be dropped.
    """


def classify(exc: BaseException) -> Failure | None:
    """What a Gmail call's exception is in the policy's terms; None for anything else (a bug)."""
    if isinstance(exc, MalformedAnswer):
        return Failure(None, TRANSIENT, detail=str(exc))
    if isinstance(exc, BatchError) and getattr(exc, "resp", None) is None:
        return Failure(None, TRANSIENT, detail=f"unreadable batch answer: {exc.reason}")
    if isinstance(exc, HttpError):
        reason, message = _error_fields(exc.content)
        retry_after = parse_retry_after(exc.resp.get("retry-after"))
        return Failure(exc.resp.status, reason, retry_after, message)
    if isinstance(exc, TokenRefused):
        if exc.error == INVALID_GRANT:
            return Failure(None, INVALID_GRANT, detail="token refresh refused")
        if exc.status in (408, 429) or exc.status >= 500:
            # Busy or failing: waited out (Retry-After) or retried like any call's answer.
            return Failure(exc.status, None, exc.retry_after, detail="token endpoint")
        return Failure(None, exc.error or "refresh_failed", detail="token refresh failed")
    if isinstance(exc, auth_exceptions.RefreshError):
        error = _oauth_error(exc)
        if error == INVALID_GRANT:
            return Failure(None, INVALID_GRANT, detail="token refresh refused")
        if getattr(exc, "retryable", False):
            return Failure(None, TRANSIENT, detail="token refresh failed")
        return Failure(None, error or "refresh_failed", detail="token refresh failed")
    if isinstance(exc, auth_exceptions.TransportError):
        return Failure(None, CONNECTION, detail="token endpoint unreachable")
    if isinstance(exc, TimeoutError):
        return Failure(None, TIMEOUT, detail=type(exc).__name__)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(None, "tls", detail="certificate verification failed")
    if isinstance(exc, OSError | httplib2.HttpLib2Error | http.client.HTTPException):
        return Failure(None, CONNECTION, detail=type(exc).__name__)
    return None


def _error_fields(content: bytes | str | None) -> tuple[str | None, str]:
    """Google's error `reason` (errors[0].reason, else status) and message, from a body."""
    try:
        error = json.loads(content or b"{}")["error"]
    except (ValueError, TypeError, KeyError):
        return None, ""
    if not isinstance(error, dict):
        return None, str(error)[:200]
    errors = error.get("errors")
    reason = None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        reason = errors[0].get("reason")
    reason = reason or error.get("status")
    return (str(reason) if reason else None), str(error.get("message", ""))[:200]


def _oauth_error(exc: auth_exceptions.RefreshError) -> str | None:
    for arg in exc.args[1:]:
        if isinstance(arg, Mapping) and isinstance(arg.get("error"), str):
            return str(arg["error"])
    text = str(exc.args[0]) if exc.args else ""
    return INVALID_GRANT if INVALID_GRANT in text else None


class _Connections:
    """The process's idle HTTP connections to Google, lent to one round at a time.

    A round takes an `httplib2.Http` (its kept-alive connections to the API and the token
    endpoint) and gives it back when it ends, for the next round of any mailbox: connections are
    as many as rounds run at once, whatever the number of mailboxes. No credential rides on them:
    each request carries its mailbox's token.
    """

    KEEP = 16  # idle ones kept; more are closed

    def __init__(self) -> None:
        self._idle: dict[float, list[httplib2.Http]] = {}
        self._lock = threading.Lock()

    def take(self, timeout: float) -> httplib2.Http:
        with self._lock:
            idle = self._idle.get(timeout)
            if idle:
                return idle.pop()
        return httplib2.Http(timeout=timeout)

    def give(self, http: httplib2.Http, timeout: float) -> None:
        with self._lock:
            idle = self._idle.setdefault(timeout, [])
            if len(idle) < self.KEEP:
                idle.append(http)
                return
        http.close()


CONNECTIONS = _Connections()


class _RoundHttp:
    """One mailbox's HTTP for one round, as the client library calls it (httplib2's `request`).

    Each request carries the mailbox's access token, refreshed first when it is (nearly) spent,
    and refreshed again when Gmail answers 401 (sent once more). The connections are lent by
    `CONNECTIONS` for the round and given back when it ends.
    """

    def __init__(self, api: GmailApi, timeout: float) -> None:
        self._api = api
        self._timeout = timeout
        self._http = CONNECTIONS.take(timeout)

    def _send(
        self, uri: str, method: str, body: Any, headers: dict[str, str], **kwargs: Any
    ) -> tuple[httplib2.Response, bytes]:
        self._api.sent += 1
        response, content = self._http.request(uri, method, body=body, headers=headers, **kwargs)
        return response, content

    def _send_token(
        self, uri: str, method: str, body: str | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        response, content = self._send(uri, method, body, headers)
        return response.status, dict(response), content

    def _refresh(self) -> None:
        credentials = self._api.credentials
        refresh(credentials, self._send_token)
        token, expiry = credentials.token, credentials.expiry
        if self._api.on_token is not None and token and expiry is not None:
            self._api.on_token(token, expiry)

    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[httplib2.Response, bytes]:
        credentials = self._api.credentials
        if due(credentials, self._api.early):
            self._refresh()
        sent = dict(headers or {})
        sent["authorization"] = f"Bearer {credentials.token}"
        response, content = self._send(uri, method, body, sent, **kwargs)
        if response.status == 401:  # revoked meanwhile, or the token was refused: once more
            self._refresh()
            sent["authorization"] = f"Bearer {credentials.token}"
            response, content = self._send(uri, method, body, sent, **kwargs)
        return response, content

    def close(self) -> None:
        CONNECTIONS.give(self._http, self._timeout)


class _RoundClient:
    """The client library's objects for one round, built from the shared description."""

    def __init__(self, http: _RoundHttp, api_endpoint: str) -> None:
        self.http = http
        service = build_from_document(
            api_description(), http=http, client_options={"api_endpoint": api_endpoint}
        )
        self.users = service.users()
        # Built once: the client library makes a new resource object on every call otherwise.
        self.messages = self.users.messages()
        self.threads = self.users.threads()
        self.history = self.users.history()


@dataclass(frozen=True)
class Get:
    """One call of a batch: threads.get or messages.get, format metadata."""

    kind: Literal["thread", "message"]
    id: str

    @property
    def method(self) -> str:
        return "threads.get" if self.kind == "thread" else "messages.get"


class GmailApi:
    """The Gmail calls of the adapter; each one retried under `policy` and metered."""

    def __init__(
        self,
        credentials: GoogleCredentials,
        *,
        api_endpoint: str,
        http_timeout: float,
        batch_size: int,
        policy: RetryPolicy,
        pacer: Pacer | None = None,
        quota_model: str = "2025",
        on_token: Callable[[str, datetime], None] | None = None,
    ) -> None:
        check_endpoint(api_endpoint, "the Gmail API endpoint")
        self.credentials = credentials
        self.on_token = on_token  # told of each new access token and its expiry (naive UTC)
        self.early = spread(credentials)
        self.sent = 0
        self._api_endpoint = api_endpoint
        self._http_timeout = http_timeout
        self._client: _RoundClient | None = None
        self._batch_uri = api_endpoint.rstrip("/") + "/batch/gmail/v1"
        self._batch_size = batch_size
        self._policy = policy.for_service(GMAIL)
        self._pacer = pacer
        self._units = GMAIL_UNITS[quota_model]
        self.quota_units = 0

    def _spend(self, units: int) -> None:
        """Wait until the mailbox's quota allows `units` more (no wait without a pacer)."""
        if self._pacer is not None:
            self._pacer.take(units)

    @property
    def http_requests(self) -> int:
        return self.sent

    @property
    def _round(self) -> _RoundClient:
        """The round's client, built at its first call."""
        if self._client is None:
            self._client = _RoundClient(_RoundHttp(self, self._http_timeout), self._api_endpoint)
        return self._client

    def release(self) -> None:
        """The round is over: its client is dropped, its connections given back (the token is
        kept)."""
        client, self._client = self._client, None
        if client is not None:
            client.http.close()

    def _call(
        self,
        method: str,
        make: Callable[[], Any],
        call: str | None = None,
        *,
        units: int | None = None,
        empty: bool = False,
    ) -> Any:
        cost = self._units[method] if units is None else units

        def attempt() -> Any:
            self._spend(cost)
            try:
                result = make().execute(num_retries=0)
            except HttpError:
                self.quota_units += cost  # Gmail answered it: the call counts
                raise
            self.quota_units += cost
            if empty:  # a call Gmail answers without a body (204)
                return {}
            if not isinstance(result, dict):
                raise MalformedAnswer(f"gmail {method}: the answer is not a JSON object")
            return result

        result: dict[str, Any] = self._policy.call(
            attempt, classify=classify, call=call, what=f"gmail {method}"
        )
        return result

    def users_call(
        self,
        method: str,
        units: int,
        body: dict[str, Any] | None = None,
        *,
        empty: bool = False,
    ) -> dict[str, Any]:
        """One `users.*` call made outside a round (`users.watch`, `users.stop`: Gmail push):
        metered at `units` quota units, paced and retried like the round's calls, its client
        released after. `empty`: Gmail answers no body (204), `{}` is returned."""
        name = method.removeprefix("users.")
        params: dict[str, Any] = {"userId": "me"}
        if body is not None:
            params["body"] = body
        try:
            result: dict[str, Any] = self._call(
                method,
                lambda: getattr(self._round.users, name)(**params),
                units=units,
                empty=empty,
            )
            return result
        finally:
            self.release()

    def profile(self) -> dict[str, Any]:
        return self._call("users.getProfile", lambda: self._round.users.getProfile(userId="me"))

    def list_messages(
        self, page_token: str | None, page_size: int, *, resumed: bool = False
    ) -> dict[str, Any]:
        """A page of message ids, newest first. `resumed`: the token comes from a stored cursor
        (a 400 then means it is no longer valid: ResyncRequired)."""
        return self._call(
            "messages.list",
            lambda: self._round.messages.list(
                userId="me", maxResults=page_size, pageToken=page_token
            ),
            call="page" if resumed else None,
        )

    def list_history(self, start: str, page_token: str | None, page_size: int) -> dict[str, Any]:
        """A page of changes since `start`; a 404 (start too old) raises ResyncRequired."""
        return self._call(
            "history.list",
            lambda: self._round.history.list(
                userId="me",
                startHistoryId=start,
                historyTypes=list(HISTORY_TYPES),
                maxResults=page_size,
                pageToken=page_token,
            ),
            call="history",
        )

    def _request(self, get: Get) -> Any:
        client = self._round
        resource = client.threads if get.kind == "thread" else client.messages
        return resource.get(
            userId="me", id=get.id, format="metadata", metadataHeaders=list(METADATA_HEADERS)
        )

    def batches(self, gets: Sequence[Get]) -> list[Sequence[Get]]:
        """`gets` cut into batches of at most `batch_size` calls, each costing no more quota
        than the pacer lets through at once (so that the provider never sees a burst)."""
        ceiling = self._pacer.burst if self._pacer is not None else float("inf")
        chunks: list[Sequence[Get]] = []
        chunk: list[Get] = []
        cost = 0
        for get in gets:
            units = self._units[get.method]
            if chunk and (len(chunk) >= self._batch_size or cost + units > ceiling):
                chunks.append(chunk)
                chunk, cost = [], 0
            chunk.append(get)
            cost += units
        if chunk:
            chunks.append(chunk)
        return chunks

    def get_many(self, gets: Sequence[Get]) -> dict[Get, dict[str, Any]]:
        """The answers to `gets`, in batch requests (see `batches`); a lone call is sent alone.

        Parts answering 429/5xx are sent again (only them); parts answering 404 (deleted since
        they were listed) are left out of the result.
        """
        results: dict[Get, dict[str, Any]] = {}
        for chunk in self.batches(gets):
            self._policy.call_parts(
                chunk,
                lambda parts: self._send_batch(parts, results),
                call="item",
                what="gmail batch",
            )
        return results

    def _send_batch(
        self, parts: Sequence[Get], results: dict[Get, dict[str, Any]]
    ) -> dict[Get, Failure]:
        failures: dict[Get, Failure] = {}

        def on_part(request_id: str, response: Any, exception: BaseException | None) -> None:
            get = parts[int(request_id)]
            if exception is None and not isinstance(response, dict):
                exception = MalformedAnswer(f"gmail {get.method}: the answer is not a JSON object")
            if exception is None:
                results[get] = response
            else:
                failures[get] = classify(exception) or Failure(detail=type(exception).__name__)

        def attempt() -> None:
            failures.clear()
            units = sum(self._units[get.method] for get in parts)
            self._spend(units)
            if len(parts) == 1:
                # A batch of one is one call, sent as itself.
                try:
                    on_part("0", self._request(parts[0]).execute(num_retries=0), None)
                except HttpError as exc:
                    on_part("0", None, exc)
            else:
                batch = BatchHttpRequest(callback=on_part, batch_uri=self._batch_uri)
                for index, get in enumerate(parts):
                    batch.add(self._request(get), request_id=str(index))
                batch.execute(http=self._round.http)
            # Counted once the parts were answered (each part is charged as its own call).
            self.quota_units += units

        self._policy.call(attempt, classify=classify, what=f"gmail batch of {len(parts)}")
        return failures
