"""The Microsoft Graph calls of the adapter: one mailbox's requests, gated, retried, host-checked.

- Every request goes through the mailbox's `MailboxGate`: at most `limit` requests in flight (a
  $batch counts as the requests Outlook runs in parallel for it, up to 4), and a 429/503/504
  with Retry-After pauses every request of the mailbox until it has passed.
- Every link Graph hands back (nextLink, deltaLink) is followed verbatim, but only once it is
  known to point at the configured Graph root: the bearer token never goes to another host.
- Failures are classified for the shared policy (`http_policy.RULES`); a 401 first gets one fresh
  token, then means the grant is gone.
- Every mailbox's requests go through one connection pool per process (`shared_session`), each
  with its own bearer token: an idle mailbox holds no connection.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from maillink.http_policy import (
    CONNECTION,
    GRAPH,
    TIMEOUT,
    TRANSIENT,
    Failure,
    parse_retry_after,
)
from maillink.providers.base import ProviderError
from maillink.providers.gmail_api import check_endpoint
from maillink.providers.pacing import Pacer
from maillink.providers.retry import RetryPolicy

log = logging.getLogger("maillink.providers.graph")

OUTLOOK_PARALLEL = 4  # Outlook runs up to 4 requests of a $batch at once (throttling-limits)
MAX_BATCH = 20  # JSON batching: at most 20 requests in one $batch
PAUSE_STATUSES = frozenset({429, 503, 504})


check_url = check_endpoint  # the same rule as every endpoint (docs/configuration.md)


class CABundleSession(requests.Session):
    """A requests session whose explicit CA bundle is used even when REQUESTS_CA_BUNDLE is set.

    requests lets the environment override `Session.verify` (psf/requests#3829); an explicit
    bundle (the sandbox's throwaway CA) must win. Without one, the environment applies.
    """

    def __init__(self, ca_bundle: str | None = None, timeout: float | None = None) -> None:
        super().__init__()
        self.ca_bundle = ca_bundle
        self.timeout = timeout

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout  # MSAL sends its requests without a timeout
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.ca_bundle is not None and verify in (None, True):
            settings["verify"] = self.ca_bundle
        return settings


_sessions: dict[tuple[str | None, float | None], CABundleSession] = {}
_sessions_lock = threading.Lock()


def shared_session(ca_bundle: str | None, timeout: float | None) -> CABundleSession:
    """The process's Graph session for this CA bundle and timeout, shared by every mailbox.

    It keeps no cookie: what one mailbox's answer set must never ride on another's request.
    """
    key = (ca_bundle, timeout)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = CABundleSession(ca_bundle, timeout)
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            _sessions[key] = session
        return session


class TokenUnavailable(ProviderError):
    """No access token right now (the token endpoint failed transiently); retry later.

    `status` and `retry_after` are the token endpoint's answer when it was a busy or failing
    server (429, 408, 5xx): the policy then reads it as it reads the same answer from Graph."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class GraphHTTPError(Exception):
    """A Graph answer with an error status, read into the policy's terms."""

    def __init__(self, status: int, code: str | None, message: str, retry_after: float | None):
        super().__init__(f"{status} {code or ''}: {message}".strip())
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def read(cls, status: int, headers: Mapping[str, str], body: Any) -> GraphHTTPError:
        code, message = None, ""
        if isinstance(body, (str, bytes)):
            try:
                body = json.loads(body or "{}")
            except ValueError:
                body = {}
        error = body.get("error") if isinstance(body, Mapping) else None
        if isinstance(error, Mapping):
            code = str(error.get("code") or "") or None
            message = str(error.get("message") or "")[:200]
        retry_after = parse_retry_after(_header(headers, "Retry-After"))
        return cls(status, code, message, retry_after)

    def failure(self) -> Failure:
        return Failure(self.status, self.code, self.retry_after, self.message)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value)
    return None


def classify(exc: BaseException) -> Failure | None:
    """What a Graph call's exception is for the policy; None for anything else (a bug)."""
    if isinstance(exc, GraphHTTPError):
        return exc.failure()
    if isinstance(exc, TokenUnavailable):
        if exc.status is not None:  # busy or failing: waited out or retried like Graph's answer
            return Failure(exc.status, None, exc.retry_after, detail="token endpoint")
        return Failure(None, TRANSIENT, detail=str(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return Failure(None, "tls", detail="certificate verification failed")
    if isinstance(exc, requests.Timeout):
        return Failure(None, TIMEOUT, detail=type(exc).__name__)
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return Failure(None, CONNECTION, detail=type(exc).__name__)
    return None


class MailboxGate:
    """At most `limit` requests of one mailbox in flight, and a pause that holds them all."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._in_use = 0
        self._paused_until = 0.0
        self._cond = threading.Condition()

    def pause(self, seconds: float) -> None:
        """Hold every request of the mailbox for `seconds` (Retry-After of a 429/503/504)."""
        with self._cond:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._cond.notify_all()

    @contextmanager
    def slot(self, weight: int = 1) -> Iterator[None]:
        weight = max(1, min(weight, self.limit))
        with self._cond:
            while True:
                wait = self._paused_until - self._clock()
                if wait <= 0 and self._in_use + weight <= self.limit:
                    break
                self._cond.wait(timeout=wait if wait > 0 else None)
            self._in_use += weight
        try:
            yield
        finally:
            with self._cond:
                self._in_use -= weight
                self._cond.notify_all()


@dataclass(frozen=True)
class Part:
    """One GET of a $batch: `url` relative to the Graph root (e.g. "/me/messages/{id}?…")."""

    key: str
    url: str


class GraphApi:
    """The Graph requests of one mailbox: gated, retried under `policy`, counted."""

    def __init__(
        self,
        token_source: Callable[[], str],
        *,
        graph_url: str,
        max_concurrency: int,
        page_size: int,
        policy: RetryPolicy,
        http_timeout: float = 60.0,
        ca_bundle: str | None = None,
        batch_size: int = MAX_BATCH,
        pacer: Pacer | None = None,
    ) -> None:
        check_url(graph_url, "the Graph URL")
        self.root = graph_url.rstrip("/")
        root = urlsplit(self.root)
        self._origin = (root.scheme, (root.hostname or "").lower(), root.port or _port(root.scheme))
        self._prefix = root.path.rstrip("/") + "/"
        self._token_source = token_source
        self._policy = policy.for_service(GRAPH)
        self._timeout = http_timeout
        self._prefer = f'odata.maxpagesize={page_size}, IdType="ImmutableId"'
        self._batch_size = batch_size
        self.gate = MailboxGate(max_concurrency)
        self._pacer = pacer  # requests a mailbox may send (a $batch counts its parts)
        self._session = shared_session(ca_bundle, http_timeout)
        self._count_lock = threading.Lock()
        self.http_requests = 0

    # --- links ---------------------------------------------------------------------------

    def check_link(self, link: str) -> str:
        """`link` if it points under the configured Graph root; ProviderError otherwise."""
        try:
            parts = urlsplit(link)
            origin = (
                parts.scheme,
                (parts.hostname or "").lower(),
                parts.port or _port(parts.scheme),
            )
        except ValueError:
            origin, parts = None, None
        if parts is None or origin != self._origin or not parts.path.startswith(self._prefix):
            raise ProviderError(
                f"refused to follow a Graph link outside {self.root} ({_safe(link)}): "
                "the access token is only sent to the configured Graph host"
            )
        return link

    def url(self, path: str) -> str:
        return self.root + path

    # --- requests ------------------------------------------------------------------------

    def get(self, url: str, *, call: str | None = None, what: str = "graph") -> dict[str, Any]:
        """GET an absolute URL under the Graph root (a built URL or a followed link)."""
        self.check_link(url)
        return self._call("GET", url, None, call=call, what=what, weight=1)

    def send(self, method: str, path: str, body: Any = None, *, what: str) -> dict[str, Any]:
        """`method` on `path` under the Graph root (POST, PATCH, DELETE: the subscriptions of
        change notifications); an empty answer (204) is {}."""
        return self._call(method, self.root + path, body, call=None, what=what, weight=1)

    def _call(
        self, method: str, url: str, body: Any, *, call: str | None, what: str, weight: int
    ) -> dict[str, Any]:
        refreshed = False

        cost = len(body["requests"]) if isinstance(body, dict) and "requests" in body else 1

        def attempt() -> dict[str, Any]:
            nonlocal refreshed
            if self._pacer is not None:
                self._pacer.take(cost)
            try:
                return self._send(method, url, body, weight)
            except GraphHTTPError as error:
                if error.status != 401 or refreshed:
                    raise
                refreshed = True  # an access token may expire in flight: one fresh one, then REAUTH
                invalidate = getattr(self._token_source, "invalidate", None)
                if callable(invalidate):
                    invalidate()
                return self._send(method, url, body, weight)

        return self._policy.call(attempt, classify=classify, call=call, what=what)

    def _send(self, method: str, url: str, body: Any, weight: int) -> dict[str, Any]:
        with self.gate.slot(weight):
            token = self._token_source()
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Prefer": self._prefer,
            }
            response = self._session.request(
                method,
                url,
                headers=headers,
                json=body,
                timeout=self._timeout,
                allow_redirects=False,
            )
            with self._count_lock:
                self.http_requests += 1
        # A redirect is not followed: the bearer token would go wherever it points.
        if response.status_code >= 400 or response.status_code in (301, 302, 303, 307, 308):
            error = GraphHTTPError.read(response.status_code, response.headers, response.content)
            self._maybe_pause(error.status, error.retry_after)
            raise error
        if response.status_code == 204:
            return {}
        try:
            data = response.json()
        except ValueError:
            raise GraphHTTPError(502, "badResponse", "the answer is not JSON", None) from None
        return data if isinstance(data, dict) else {}

    def _maybe_pause(self, status: int, retry_after: float | None) -> None:
        if status in PAUSE_STATUSES and retry_after:
            wait = min(retry_after, self._policy.max_retry_after)
            log.warning("graph: %s, mailbox paused for %.1fs", status, wait)
            self.gate.pause(wait)

    # --- $batch --------------------------------------------------------------------------

    def batch(self, parts: Sequence[Part], *, what: str) -> dict[str, dict[str, Any]]:
        """The 2xx bodies of `parts` by key, in $batch requests of up to `batch_size` GETs.

        Parts answering 429/5xx are sent again (only them, after their Retry-After); parts
        answering 404 (deleted since) are left out. Several batches go out concurrently, the
        gate keeping the mailbox within its concurrency limit.
        """
        results: dict[str, dict[str, Any]] = {}
        lock = threading.Lock()
        chunks = [parts[i : i + self._batch_size] for i in range(0, len(parts), self._batch_size)]

        def run(chunk: Sequence[Part]) -> None:
            self._policy.call_parts(
                chunk,
                lambda pending: self._send_batch(pending, results, lock),
                call="item",
                what=what,
            )

        if len(chunks) <= 1:
            for chunk in chunks:
                run(chunk)
            return results
        with ThreadPoolExecutor(max_workers=self.gate.limit) as pool:
            for future in [pool.submit(run, chunk) for chunk in chunks]:
                future.result()
        return results

    def _send_batch(
        self, parts: Sequence[Part], results: dict[str, dict[str, Any]], lock: threading.Lock
    ) -> dict[Part, Failure]:
        body = {
            "requests": [
                {
                    "id": str(index),
                    "method": "GET",
                    "url": part.url,
                    "headers": {"Prefer": self._prefer},
                }
                for index, part in enumerate(parts)
            ]
        }
        answer = self._call(
            "POST",
            self.root + "/$batch",
            body,
            call=None,
            what=f"graph $batch of {len(parts)}",
            weight=min(OUTLOOK_PARALLEL, len(parts)),
        )
        failures: dict[Part, Failure] = {}
        answered: set[int] = set()
        for response in answer.get("responses") or ():
            try:
                index, status = int(response["id"]), int(response["status"])
                part = parts[index]
            except (KeyError, TypeError, ValueError, IndexError):
                continue
            answered.add(index)
            if 200 <= status < 300:
                with lock:
                    results[part.key] = response.get("body") or {}
                continue
            error = GraphHTTPError.read(status, response.get("headers") or {}, response.get("body"))
            self._maybe_pause(status, error.retry_after)
            failures[part] = error.failure()
        for index, part in enumerate(parts):
            if index not in answered:
                failures[part] = Failure(None, TRANSIENT, detail="no answer for this part")
        return failures


def _port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _safe(link: str) -> str:
    """A link for a message: scheme, host and path only (state tokens stay out of logs)."""
    try:
        parts = urlsplit(link)
    except ValueError:
        return "an unreadable link"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
