"""How maillink speaks HTTP to Pipedrive: auth, token costs, retries, paging.

What each answer means is Pipedrive's part of the one error policy (`maillink.http_policy`), and
calls run in its retry loop. Reads and PATCHes are retried on connection errors, timeouts and
5xx, honouring Retry-After; a POST is retried only when Pipedrive cannot have received it (no
connection, or a 429), because a create whose answer was lost may exist: the caller then gets
`WriteOutcomeUnknown` and looks the record up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests

from maillink.crm.base import (
    CRMAuthError,
    CRMError,
    CRMRateLimited,
    CRMRefused,
    CRMUnavailable,
)
from maillink.crm.transport import (
    Answer,
    NeverSent,
    NoAnswer,
    RequestsTransport,
    Transport,
    Urllib3Transport,
)
from maillink.http_policy import (
    CONNECTION,
    DAILY_LIMIT,
    NO_ANSWER,
    PIPEDRIVE,
    TRANSIENT,
    Action,
    Failure,
    TryAgain,
    decide,
    parse_retry_after,
    retry_answers,
)

# Operation -> tokens it costs (the specs' x-token-cost, December 2025).
TOKEN_COSTS: dict[str, int] = {
    "persons.search": 20,
    "persons.list": 10,
    "deals.list": 10,
    "deals.archived": 20,
    "leads.list": 20,
    "leads.archived": 40,
    "projects.list": 20,
    "activityTypes.list": 20,
    "activities.list": 10,
    "activities.create": 5,
    "activities.update": 5,
    "persons.create": 5,
    "webhooks.list": 10,  # maillink's own webhooks (`maillink crm webhooks`)
    "webhooks.create": 10,
    "webhooks.delete": 6,
    "users.list": 20,
}

BURST_WINDOW = 2.0  # seconds: Pipedrive's rolling burst window, the wait when it names none
DAILY_REMAINING = "x-daily-ratelimit-token-remaining"
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})


class PipedriveNotFound(CRMRefused):
    """404 or 410: the record is gone (deleted in Pipedrive) or never existed."""


class WriteOutcomeUnknown(CRMUnavailable):
    """A create was sent but its answer never came: it may exist. Look it up before creating again."""


class PaginationLoop(CRMError):
    """Pipedrive offered a page it had already given: stop rather than loop."""


class Paginator:
    """Where the next page of a list starts: a v2 `next_cursor` or a v1 `start` offset.

    `advance()` refuses a cursor or offset it has already been given, so a misbehaving server
    cannot make a walk loop.
    """

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.finished = False
        self.pages = 0
        self._seen: set[str] = set()

    def advance(self, envelope: dict[str, Any]) -> None:
        self.pages += 1
        extra = envelope.get("additional_data") or {}
        offsets = extra.get("pagination") or extra
        if extra.get("next_cursor"):
            name, token = "cursor", extra["next_cursor"]
        elif offsets.get("more_items_in_collection"):
            start = int(offsets.get("start") or 0)
            self._seen.add(f"start={start}")
            data = envelope.get("data")
            token = offsets.get("next_start")
            if token is None:
                token = start + (len(data) if isinstance(data, list) else 0)
            name = "start"
        else:
            self.finished, self.params = True, {}
            return
        marker = f"{name}={token}"
        if marker in self._seen:
            raise PaginationLoop(f"Pipedrive offered {marker} a second time; stopped paging")
        self._seen.add(marker)
        self.params = {name: token}


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return base_url.rstrip("/")
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme == "http" and loopback:
        return base_url.rstrip("/")
    raise ValueError(
        f"Pipedrive base_url {base_url!r} must be https:// (http:// only for loopback)"
    )


def _until_utc_midnight() -> float:
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


class _Observed:
    """Where observers hook in (the daemon's metrics), as on a `requests.Session`."""

    def __init__(self) -> None:
        self.hooks: dict[str, list[Callable[[Answer], Any]]] = {"response": []}


class PipedriveHTTP:
    """One Pipedrive company's API: every call authenticated, counted, retried by the policy."""

    def __init__(
        self,
        base_url: str,
        *,
        api_token: str | None = None,
        oauth_token: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if bool(api_token) == bool(oauth_token):
            raise ValueError("give Pipedrive either api_token or oauth_token (exactly one)")
        self.base_url = _check_base_url(base_url)
        self._auth = (
            {"x-api-token": api_token} if api_token else {"Authorization": f"Bearer {oauth_token}"}
        )
        # `session.hooks["response"]` observers see every answer, as with a requests session.
        self.session: Any = session if session is not None else _Observed()
        self.transport: Transport = (
            RequestsTransport(session) if session is not None else Urllib3Transport()
        )
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_wait = max_wait
        self._sleep = sleep
        self._lock = threading.Lock()
        self.tokens_spent = 0
        self.requests_made = 0

    def call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One API call; returns Pipedrive's envelope `{success, data, additional_data}`."""
        return retry_answers(
            lambda: self._once(operation, method, path, params, json),
            attempts=self.max_retries + 1,
            sleep=self._sleep,
        )

    def pages(
        self,
        operation: str,
        path: str,
        params: dict[str, Any],
        *,
        max_pages: int | None = None,
    ) -> Iterator[Any]:
        """The `data` of each page of a list, following cursors or offsets, at most `max_pages`."""
        paginator = Paginator()
        while not paginator.finished:
            if max_pages is not None and paginator.pages >= max_pages:
                return
            envelope = self.call(operation, "GET", path, params={**params, **paginator.params})
            yield envelope.get("data")
            paginator.advance(envelope)

    def _count(self, operation: str | None) -> None:
        with self._lock:
            if operation is None:
                self.requests_made += 1
            else:
                self.tokens_spent += TOKEN_COSTS.get(operation, 0)

    def _once(
        self,
        operation: str,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
    ) -> dict[str, Any]:
        idempotent = method.upper() in _IDEMPOTENT
        where = f"{method} {path}"
        self._count(None)
        try:
            response = self.transport.request(
                method,
                self.base_url + path,
                params=params,
                json=body,
                headers=self._auth,
                timeout=self.timeout,
            )
        except (NeverSent, NoAnswer) as exc:
            # NeverSent: Pipedrive cannot have received it; NoAnswer: it may have.
            failure = Failure(None, NO_ANSWER if isinstance(exc, NoAnswer) else CONNECTION)
            if failure.reason == NO_ANSWER and not idempotent:
                raise WriteOutcomeUnknown(f"no answer from Pipedrive to {where}: {exc}") from exc
            unreachable = CRMUnavailable(f"Pipedrive unreachable on {where}: {exc}")
            if decide(PIPEDRIVE, failure) is Action.RETRY:
                raise TryAgain(unreachable) from exc
            raise unreachable from exc

        if isinstance(self.session, _Observed):
            for hook in self.session.hooks.get("response", ()):
                hook(response)
        status = response.status_code
        if 200 <= status < 300:
            self._count(operation)
            return self._envelope(response, where, idempotent)
        headers = response.headers
        daily = status == 429 and (headers.get(DAILY_REMAINING) or "").strip() == "0"
        failure = Failure(
            status,
            DAILY_LIMIT if daily else None,
            parse_retry_after(headers.get("Retry-After")),
        )
        action = decide(PIPEDRIVE, failure)
        if action not in (Action.REAUTH, Action.WAIT, Action.PARK, Action.RETRY):
            self._count(operation)  # refused tokens, limits and Pipedrive's own trouble: no cost
        answer = _error_text(response)
        message = f"Pipedrive answered {status} to {where}: {answer}"
        if action is Action.RETRY:
            if not idempotent:
                raise WriteOutcomeUnknown(message)
            wait = failure.retry_after
            if wait is not None and wait > self.max_wait:
                raise CRMUnavailable(f"{message} (retry after {wait:.0f} s)")
            raise TryAgain(CRMUnavailable(message), wait)
        if action is Action.PARK:
            wait = failure.retry_after
            wait = wait if wait is not None else _until_utc_midnight()
            raise CRMRateLimited(f"daily token budget spent: {message}", wait, daily=True)
        if action is Action.WAIT:
            raise self._burst(failure, headers, message)
        if action is Action.REAUTH:
            raise CRMAuthError(message)
        if action is Action.SKIP:
            raise PipedriveNotFound(message, status, answer)
        raise CRMRefused(message, status, answer)

    def _burst(self, failure: Failure, headers: Mapping[str, str], message: str) -> Exception:
        """A burst 429: waited out (the longest of its reset and Retry-After, else the window),
        or raised as CRMRateLimited when that is longer than `max_wait`."""
        reset = parse_retry_after(headers.get("x-ratelimit-reset"))
        waits = [w for w in (reset, failure.retry_after) if w is not None]
        wait = float(math.ceil(max(waits))) if waits else BURST_WINDOW
        limited = CRMRateLimited(message, wait, daily=False)
        if wait > self.max_wait:
            return limited
        return TryAgain(limited, wait)

    @staticmethod
    def _envelope(response: Answer, where: str, idempotent: bool) -> dict[str, Any]:
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        if isinstance(envelope, dict) and envelope.get("success") is not False:
            return envelope
        problem = f"Pipedrive answered {response.status_code} to {where} without a valid body"
        if not idempotent:
            raise WriteOutcomeUnknown(problem)
        if decide(PIPEDRIVE, Failure(response.status_code, TRANSIENT)) is Action.RETRY:
            raise TryAgain(CRMUnavailable(problem))
        raise CRMUnavailable(problem)


def _error_text(response: Answer) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason or ""
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:500]
    return str(body)[:200]
