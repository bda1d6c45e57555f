"""The retry and error policy of the providers, as data.

One table (`RULES`) says what each failure means — retry with backoff, wait for Retry-After,
resync, needs re-auth, skip the item, fail — instead of `if` chains spread through the adapters.
An adapter only says what a failure *is* (a `Failure`: HTTP status, the provider's error reason,
Retry-After); `RetryPolicy` runs calls under the table with tenacity. Provider-neutral: Gmail uses
it now, Microsoft Graph later.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import tenacity

from maillink.providers.base import NeedsReauth, ProviderError

log = logging.getLogger("maillink.providers")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# Reasons for failures that have no HTTP status; adapters classify their exceptions into these.
CONNECTION = "connection"  # refused, reset, DNS, TLS handshake dropped
TIMEOUT = "timeout"
TRANSIENT = "transient"  # the library says a retry may help (e.g. token endpoint 5xx)
INVALID_GRANT = "invalid_grant"  # OAuth: refresh token revoked or expired


class Action(enum.StrEnum):
    RETRY = "retry"  # transient: back off (exponential, jitter) and try again
    WAIT = "wait"  # throttled: wait Retry-After (else back off) and try again
    RESYNC = "resync"  # the cursor or page token is no longer valid: start the round over
    REAUTH = "reauth"  # the grant is gone: the account must reconnect
    SKIP = "skip"  # the item is gone (deleted meanwhile): move on without it
    FAIL = "fail"  # a retry will not help


@dataclass(frozen=True)
class Failure:
    """What a failed call was, in the table's terms. `detail` is for messages: never a token."""

    status: int | None = None  # HTTP status; None for connection errors and auth-library errors
    reason: str | None = None  # Gmail errors[].reason, Graph error.code, OAuth error
    retry_after: float | None = None  # seconds, from the Retry-After header
    detail: str = ""

    def __str__(self) -> str:
        parts = [str(self.status) if self.status is not None else "", self.reason or ""]
        text = " ".join(part for part in parts if part) or "error"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class Rule:
    """`action` for failures with this `status` and/or `reason`, on calls of kind `call`.

    A None field matches anything. `call` names the kind of call the rule is about: "history"
    (a change feed from a stored cursor), "page" (a resumed page token), "item" (one message or
    thread). The first matching rule of the table wins, so specific rules come first.
    """

    action: Action
    status: int | None = None
    reason: str | None = None
    call: str | None = None

    def matches(self, failure: Failure, call: str | None) -> bool:
        return (
            (self.status is None or self.status == failure.status)
            and (self.reason is None or self.reason == failure.reason)
            and (self.call is None or self.call == call)
        )


RULES: tuple[Rule, ...] = (
    # The grant: a revoked refresh token, a 401 that survived the token refresh, a consent given
    # without the scope (Google's granular consent lets the user untick it).
    Rule(Action.REAUTH, reason=INVALID_GRANT),
    Rule(Action.REAUTH, status=401),
    Rule(Action.REAUTH, status=403, reason="insufficientPermissions"),
    Rule(Action.REAUTH, status=403, reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
    # Cursors that expired, page tokens refused, items deleted between listing and fetching.
    Rule(Action.RESYNC, status=404, call="history"),  # Gmail startHistoryId too old
    Rule(Action.RESYNC, status=410),  # Graph delta token expired
    Rule(Action.RESYNC, reason="syncStateNotFound"),
    Rule(Action.RESYNC, reason="resyncRequired"),
    Rule(Action.RESYNC, status=400, call="page"),
    Rule(Action.SKIP, status=404, call="item"),
    # Throttling: wait what the server asks.
    Rule(Action.WAIT, status=429),
    Rule(Action.WAIT, status=403, reason="rateLimitExceeded"),
    Rule(Action.WAIT, status=403, reason="userRateLimitExceeded"),
    Rule(Action.WAIT, status=503),
    Rule(Action.WAIT, status=504),
    # Transient trouble: back off and try again.
    Rule(Action.RETRY, status=500),
    Rule(Action.RETRY, status=502),
    Rule(Action.RETRY, status=408),
    Rule(Action.RETRY, reason=CONNECTION),
    Rule(Action.RETRY, reason=TIMEOUT),
    Rule(Action.RETRY, reason=TRANSIENT),
)


class ResyncRequired(ProviderError):
    """The stored cursor (or a resumed page token) is no longer valid: start that round over."""


class ItemGone(ProviderError):
    """The message or thread is gone (deleted after it was listed)."""


class Throttled(ProviderError):
    """Still throttled after the retries, or asked to wait longer than is worth waiting here."""

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


Classifier = Callable[[BaseException], Failure | None]
"""Says what an exception is, or None for exceptions that are not a provider failure (bugs)."""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Runs provider calls under `rules`: bounded attempts, exponential backoff with full jitter,
    Retry-After honoured (up to `max_retry_after`; a longer wait raises `Throttled` so that the
    caller pauses the mailbox instead of holding a worker)."""

    rules: tuple[Rule, ...] = RULES
    attempts: int = 5
    backoff: float = 0.5  # the first backoff's ceiling; doubles each attempt
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    sleep: Callable[[float], None] = time.sleep

    def action(self, failure: Failure, call: str | None = None) -> Action:
        for rule in self.rules:
            if rule.matches(failure, call):
                return rule.action
        return Action.FAIL

    def retryable(self, failure: Failure, call: str | None = None) -> bool:
        if self.action(failure, call) not in (Action.RETRY, Action.WAIT):
            return False
        return failure.retry_after is None or failure.retry_after <= self.max_retry_after

    def delay(self, failure: Failure, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`: Retry-After when given, else backoff."""
        if failure.retry_after is not None:
            return min(failure.retry_after, self.max_retry_after)
        ceiling = min(self.max_backoff, self.backoff * 2 ** max(attempt - 1, 0))
        return random.uniform(0, ceiling)  # full jitter, as tenacity's wait_random_exponential

    def error(self, failure: Failure, call: str | None, what: str, attempts: int = 1) -> Exception:
        """The exception that tells the sync loop what `failure` means."""
        action = self.action(failure, call)
        where = f"{what}: " if what else ""
        if action is Action.REAUTH:
            return NeedsReauth(
                f"{where}the grant was revoked or has expired ({failure}); reconnect"
            )
        if action is Action.RESYNC:
            return ResyncRequired(f"{where}{failure}: the cursor must be rebuilt")
        if action is Action.SKIP:
            return ItemGone(f"{where}{failure}")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if action is Action.WAIT or failure.retry_after is not None:
            return Throttled(f"{where}throttled ({failure}){tries}", failure.retry_after)
        return ProviderError(f"{where}{failure}{tries}")

    def call(
        self, fn: Callable[[], T], *, classify: Classifier, call: str | None = None, what: str = ""
    ) -> T:
        """`fn()`, retried under the table; a failure it does not retry raises `error(...)`."""

        def retry(exc: BaseException) -> bool:
            failure = classify(exc)
            return failure is not None and self.retryable(failure, call)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            failure = classify(exc) if exc is not None else None
            return self.delay(failure or Failure(), state.attempt_number)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            failure = classify(exc) if exc is not None else None
            wait_s = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s: %s; retry %d in %.1fs", what, failure, state.attempt_number, wait_s)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry),
            wait=wait,
            stop=tenacity.stop_after_attempt(self.attempts),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return fn()

        try:
            return retrying(attempt)
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            raise self.error(failure, call, what, attempts) from exc

    def call_parts(
        self,
        keys: Sequence[K],
        send: Callable[[Sequence[K]], Mapping[K, Failure]],
        *,
        call: str | None = None,
        what: str = "",
    ) -> set[K]:
        """Send the parts `keys` of a batch until each has succeeded or is gone; the gone ones.

        `send(parts)` sends those parts as one request (retrying the request itself with `call`)
        and returns the failures of the parts that failed. Retryable parts are sent again, only
        them, after the longest of their delays (Retry-After honoured). A part that cannot be
        retried raises: nothing is dropped silently.
        """
        pending: Sequence[K] = list(keys)
        gone: set[K] = set()
        attempt = 0
        while pending:
            attempt += 1
            failures = send(pending)
            again: list[K] = []
            delays: list[float] = []
            for key, failure in failures.items():
                action = self.action(failure, call)
                if action is Action.SKIP:
                    gone.add(key)
                elif self.retryable(failure, call) and attempt < self.attempts:
                    again.append(key)
                    delays.append(self.delay(failure, attempt))
                else:
                    raise self.error(failure, call, what, attempt)
            if again:
                log.warning(
                    "%s: %d of %d parts failed (%s); retry in %.1fs",
                    what,
                    len(again),
                    len(pending),
                    failures[again[0]],
                    max(delays),
                )
                self.sleep(max(delays))
            pending = again
        return gone
