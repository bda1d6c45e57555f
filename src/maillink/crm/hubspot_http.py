"""How maillink speaks HTTP to HubSpot: the bearer token, request counts, retries, rate limits.

What each answer means is HubSpot's part of the one error policy (`maillink.http_policy`), and
calls run in its retry loop. The bytes travel over the same small transport as Pipedrive's
(`transport`: urllib3, and whether a failed request can have arrived). HubSpot reads
by POST (batch read, search), so a call says whether it `writes`: a read is retried on
connection errors, timeouts and 5xx; a write only when HubSpot cannot have received it (no
connection) or refused it unapplied (429), else the caller gets `WriteOutcomeUnknown` and looks
the record up. A 429 names its policy in the body: DAILY parks the writes until midnight
(`CRMRateLimited(daily=True)`); the ten-second burst and the search endpoints' per-second limit
are waited out (X-HubSpot-RateLimit-Interval-Milliseconds, else the policy's window).
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from maillink.crm.base import (
    CRMAuthError,
    CRMRateLimited,
    CRMRefused,
    CRMUnavailable,
)
from maillink.crm.transport import (
    Answer,
    NeverSent,
    NoAnswer,
    Transport,
    Urllib3Transport,
)
from maillink.http_policy import (
    CONNECTION,
    DAILY_LIMIT,
    HUBSPOT,
    TIMEOUT,
    Action,
    Failure,
    TryAgain,
    decide,
    parse_retry_after,
    retry_answers,
)

DEFAULT_BASE_URL = "https://api.hubapi.com"
# The wait of a 429 that names no interval, by HubSpot's `policyName`.
POLICY_WINDOWS = {"TEN_SECONDLY_ROLLING": 10.0, "SECONDLY": 1.0}
INTERVAL_HEADER = "X-HubSpot-RateLimit-Interval-Milliseconds"
REMAINING_HEADER = "X-HubSpot-RateLimit-Remaining"
DAILY_REMAINING_HEADER = "X-HubSpot-RateLimit-Daily-Remaining"


class HubSpotNotFound(CRMRefused):
    """404: the record is gone (archived in HubSpot) or never existed."""


class WriteOutcomeUnknown(CRMUnavailable):
    """A write was sent but its answer never came (or came unreadable): it may have been done.
    Look the record up before writing it again."""


class TokenSource(Protocol):
    """Where OAuth access tokens come from (`maillink.crm.hubspot_oauth.OAuthTokens`)."""

    def current(self) -> str: ...

    def refresh(self, stale: str) -> str: ...


class _Expired(CRMAuthError):
    """401: the access token is no longer valid (an OAuth one may be refreshed once)."""


def check_base_url(base_url: str) -> str:
    """`base_url` without its trailing slash: https, or http for a loopback host only."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if host and (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        return base_url.rstrip("/")
    raise ValueError(f"HubSpot base_url {base_url!r} must be https:// (http:// only for loopback)")


def _until_utc_midnight(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


class HubSpotHTTP:
    """One HubSpot account's API through a private app's access token (or an OAuth access
    token): every call authenticated, counted (`requests_made`, `by_operation`), retried by
    the policy. `daily_remaining` is the last X-HubSpot-RateLimit-Daily-Remaining seen."""

    def __init__(
        self,
        base_url: str,
        *,
        access_token: str = "",
        tokens: TokenSource | None = None,
        transport: Transport | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        if not access_token and tokens is None:
            raise ValueError("HubSpot needs an access token")
        self.base_url = check_base_url(base_url)
        self._access_token = access_token
        self.tokens = tokens  # an OAuth grant's tokens: refreshed once after a 401
        self.transport: Transport = transport if transport is not None else Urllib3Transport()
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_wait = max_wait
        self._sleep = sleep
        self._now = now
        self._lock = threading.Lock()
        self.requests_made = 0
        self.by_operation: Counter[str] = Counter()
        self.daily_remaining: int | None = None
        self.hooks: list[Callable[[Answer], Any]] = []  # observers of every answer (metrics)

    def call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        writes: bool = False,
    ) -> dict[str, Any]:
        """One API call; returns HubSpot's JSON body ({} for 204). 207 multi-status answers
        are returned as they are: their `errors` are the caller's to read."""
        token = self.tokens.current() if self.tokens is not None else self._access_token
        try:
            return self._call(operation, method, path, params, json, writes, token)
        except _Expired:
            if self.tokens is None:
                raise
        token = self.tokens.refresh(token)
        return self._call(operation, method, path, params, json, writes, token)

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        writes: bool,
        token: str,
    ) -> dict[str, Any]:
        return retry_answers(
            lambda: self._once(operation, method, path, params, json, writes, token),
            attempts=self.max_retries + 1,
            sleep=self._sleep,
        )

    def _once(
        self,
        operation: str,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        writes: bool,
        token: str,
    ) -> dict[str, Any]:
        where = f"{method} {path}"
        with self._lock:
            self.requests_made += 1
            self.by_operation[operation] += 1
        try:
            answer = self.transport.request(
                method,
                self.base_url + path,
                params=params,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.timeout,
            )
        except (NeverSent, NoAnswer) as exc:
            if isinstance(exc, NoAnswer) and writes:
                raise WriteOutcomeUnknown(f"no answer from HubSpot to {where}: {exc}") from exc
            failure = Failure(None, CONNECTION if isinstance(exc, NeverSent) else TIMEOUT)
            unreachable = CRMUnavailable(f"HubSpot unreachable on {where}: {exc}")
            if decide(HUBSPOT, failure) is Action.RETRY:
                raise TryAgain(unreachable) from exc
            raise unreachable from exc
        for hook in self.hooks:
            hook(answer)
        self._note_limits(answer.headers)
        if 200 <= answer.status_code < 300:
            return self._body(answer, where, writes)
        raise self._failure(answer, where, writes)

    def _note_limits(self, headers: Mapping[str, str]) -> None:
        daily = (headers.get(DAILY_REMAINING_HEADER) or "").strip()
        if daily.isdigit():
            self.daily_remaining = int(daily)

    @staticmethod
    def _body(answer: Answer, where: str, writes: bool) -> dict[str, Any]:
        if answer.status_code == 204 or not answer.content:
            return {}
        try:
            body = answer.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            return body
        problem = f"HubSpot answered {answer.status_code} to {where} without a readable body"
        raise WriteOutcomeUnknown(problem) if writes else CRMUnavailable(problem)

    def _failure(self, answer: Answer, where: str, writes: bool) -> Exception:
        """The exception (or `TryAgain`) that a non-2xx answer means under the policy."""
        status, headers = answer.status_code, answer.headers
        error = _error_body(answer)
        policy = str(error.get("policyName") or "")
        failure = Failure(
            status,
            DAILY_LIMIT if status == 429 and policy == "DAILY" else None,
            parse_retry_after(headers.get("Retry-After")),
        )
        text = str(error.get("message") or answer.text[:200] or answer.reason)
        message = f"HubSpot answered {status} to {where}: {text}"
        action = decide(HUBSPOT, failure)
        if action is Action.RETRY:
            if writes:
                return WriteOutcomeUnknown(message)
            return TryAgain(CRMUnavailable(message), failure.retry_after)
        if action is Action.PARK:
            wait = failure.retry_after
            wait = wait if wait is not None else _until_utc_midnight(self._now())
            return CRMRateLimited(f"HubSpot's daily limit is spent: {message}", wait, daily=True)
        if action is Action.WAIT:
            return self._burst(policy, failure, headers, message)
        if action is Action.REAUTH:
            return _Expired(message) if status == 401 else CRMAuthError(message)
        if action is Action.SKIP:
            return HubSpotNotFound(message, status, text)
        return CRMRefused(message, status, text)

    def _burst(
        self, policy: str, failure: Failure, headers: Mapping[str, str], message: str
    ) -> Exception:
        """A burst (or search) 429: waited out, or raised when that is longer than `max_wait`.
        A refused call was not carried out, so even a write may be sent again."""
        interval = (headers.get(INTERVAL_HEADER) or "").strip()
        wait = failure.retry_after
        if wait is None and interval.isdigit():
            wait = int(interval) / 1000
        if wait is None:
            wait = POLICY_WINDOWS.get(policy, 10.0)
        limited = CRMRateLimited(message, wait, daily=False)
        return limited if wait > self.max_wait else TryAgain(limited, wait)


def _error_body(answer: Answer) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
