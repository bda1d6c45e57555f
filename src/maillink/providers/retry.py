"""The mail providers' side of the error policy (`maillink.http_policy`): calls run under it.

The table of what each failure means (`http_policy.RULES`), the `Failure` an adapter classifies its
exceptions into, and the Retry-After parser are shared with the CRM clients. Here `RetryPolicy`
runs Gmail and Graph calls under the table with the shared retry loop, and turns what a failure
means into what the sync loop understands (`Throttled`, `ResyncRequired`, `ItemGone`,
`NeedsReauth`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from maillink.http_policy import GMAIL, RULES, Action, Failure, Rule, decide, retry_calls
from maillink.providers.base import NeedsReauth, ProviderError

log = logging.getLogger("maillink.providers")

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

__all__ = [
    "Classifier",
    "Failure",  # the shared policy's, for the callers that meter the attempts
    "ItemGone",
    "ResyncRequired",
    "RetryPolicy",
    "Throttled",
]


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


@dataclass(frozen=True)
class RetryPolicy:
    """Runs provider calls under `rules`: bounded attempts, exponential backoff with full jitter,
    Retry-After honoured (up to `max_retry_after`; a longer wait raises `Throttled` so that the
    caller pauses the mailbox instead of holding a worker). `service` picks the service's rows of
    the table; each adapter binds its own (`for_service`)."""

    rules: tuple[Rule, ...] = RULES
    attempts: int = 5
    backoff: float = 0.5  # the first backoff's ceiling; doubles each attempt
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    sleep: Callable[[float], None] = time.sleep
    service: str = GMAIL
    # What a person does about a refused grant (a team connection's: an admin, then a refresh).
    reauth_hint: str = "reconnect"

    def for_service(self, service: str) -> RetryPolicy:
        """This policy for `service`'s calls (itself when it already is)."""
        return self if self.service == service else dataclasses.replace(self, service=service)

    def action(self, failure: Failure, call: str | None = None) -> Action:
        return decide(self.service, failure, call, self.rules)

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
                f"{where}the grant was revoked or has expired ({failure}); {self.reauth_hint}"
            )
        if action is Action.RESYNC:
            return ResyncRequired(f"{where}{failure}: the cursor must be rebuilt")
        if action is Action.SKIP:
            return ItemGone(f"{where}{failure}")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if action in (Action.WAIT, Action.PARK) or failure.retry_after is not None:
            return Throttled(f"{where}throttled ({failure}){tries}", failure.retry_after)
        return ProviderError(f"{where}{failure}{tries}")

    def call(
        self, fn: Callable[[], T], *, classify: Classifier, call: str | None = None, what: str = ""
    ) -> T:
        """`fn()`, retried under the table; a failure it does not retry raises `error(...)`."""

        def retry(exc: BaseException) -> bool:
            failure = classify(exc)
            return failure is not None and self.retryable(failure, call)

        def delay(exc: BaseException, attempt: int) -> float:
            return self.delay(classify(exc) or Failure(), attempt)

        def before_retry(exc: BaseException, attempt: int, seconds: float) -> None:
            log.warning("%s: %s; retry %d in %.1fs", what, classify(exc), attempt, seconds)

        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return fn()

        try:
            return retry_calls(
                attempt,
                attempts=self.attempts,
                retryable=retry,
                delay=delay,
                sleep=self.sleep,
                before_retry=before_retry,
            )
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
