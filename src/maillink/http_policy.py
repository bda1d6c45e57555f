"""One error policy for every HTTP service maillink calls: what each failure means, as data.

A client says what a failure *is* (a `Failure`: HTTP status, the service's error reason,
Retry-After); `decide()` looks it up in `RULES` (service, status, reason, kind of call → `Action`),
and `retry_calls()` is the one retry loop (tenacity) every client runs its calls in. Each client
then raises what the action means in its own layer (the providers' `Throttled`, `NeedsReauth`…,
the CRM's `CRMRateLimited`, `CRMAuthError`…). docs/how-it-works.md, "HTTP clients and retries".
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import tenacity

T = TypeVar("T")

# The services, as the rules and the metrics name them.
GMAIL = "gmail"
GRAPH = "graph"
PIPEDRIVE = "pipedrive"
HUBSPOT = "hubspot"  # the next CRM: its rules are here, its client is not yet
MAIL = (GMAIL, GRAPH)  # the mail providers share their rules: their reasons never collide

# Reasons for failures that carry no reason of the service's own; clients classify into these.
CONNECTION = "connection"  # refused, reset, DNS, TLS handshake dropped
NO_ANSWER = "no_answer"  # the request went out but no answer came: a write may have arrived
TIMEOUT = "timeout"
TRANSIENT = "transient"  # a retry may help (a token endpoint 5xx, an unreadable 2xx body)
INVALID_GRANT = "invalid_grant"  # OAuth: refresh token revoked or expired
DAILY_LIMIT = "daily_limit"  # the service's budget for the day is spent


class Action(enum.StrEnum):
    RETRY = "retry"  # transient: back off (exponential, jitter) and try again
    WAIT = "wait"  # throttled: wait Retry-After (else back off) and try again
    PARK = "park"  # the day's budget is spent: hold these calls until it resets
    RESYNC = "resync"  # the cursor or page token is no longer valid: start the round over
    REAUTH = "reauth"  # the grant or token is refused: the account must be reconnected
    SKIP = "skip"  # the item or record is gone (deleted meanwhile): move on without it
    FAIL = "fail"  # a retry will not help: give up and say why


@dataclass(frozen=True)
class Failure:
    """What a failed call was, in the table's terms. `detail` is for messages: never a token."""

    status: int | None = None  # HTTP status; None for connection errors and auth-library errors
    reason: str | None = None  # Gmail errors[].reason, Graph error.code, OAuth error, DAILY_LIMIT
    retry_after: float | None = None  # seconds, from the Retry-After header
    detail: str = ""

    def __str__(self) -> str:
        parts = [str(self.status) if self.status is not None else "", self.reason or ""]
        text = " ".join(part for part in parts if part) or "error"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class Rule:
    """`action` for `services`' failures with this `status` and/or `reason`, on calls of kind `call`.

    `status` is one code or a range of them (`range(500, 600)`: any 5xx). A None field matches
    anything. `call` names the kind of call: "history" (a change feed from a stored cursor),
    "page" (a resumed page token), "item" (one message or thread). The first matching rule of
    the service wins, so specific rules come first; a failure no rule matches means FAIL.
    """

    action: Action
    services: str | tuple[str, ...]
    status: int | range | None = None
    reason: str | None = None
    call: str | None = None

    def matches(self, service: str, failure: Failure, call: str | None = None) -> bool:
        services = (self.services,) if isinstance(self.services, str) else self.services
        if service not in services:
            return False
        if isinstance(self.status, range):
            status_ok = failure.status is not None and failure.status in self.status
        else:
            status_ok = self.status is None or self.status == failure.status
        return (
            status_ok
            and (self.reason is None or self.reason == failure.reason)
            and (self.call is None or self.call == call)
        )


_5XX = range(500, 600)

RULES: tuple[Rule, ...] = (
    # -- Gmail and Microsoft Graph ---------------------------------------------------------------
    # The grant: a revoked refresh token, a 401 that survived the token refresh, a consent given
    # without the scope (Google's granular consent lets the user untick it).
    Rule(Action.REAUTH, MAIL, reason=INVALID_GRANT),
    Rule(Action.REAUTH, MAIL, status=401),
    Rule(Action.REAUTH, MAIL, status=403, reason="insufficientPermissions"),  # Gmail
    Rule(Action.REAUTH, MAIL, status=403, reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT"),  # Gmail
    # Cursors that expired, page tokens refused, items deleted between listing and fetching.
    Rule(Action.RESYNC, MAIL, status=404, call="history"),  # Gmail startHistoryId too old
    Rule(Action.RESYNC, MAIL, status=410),  # Graph delta token expired
    Rule(Action.RESYNC, MAIL, reason="syncStateNotFound"),  # Graph
    Rule(Action.RESYNC, MAIL, reason="resyncRequired"),  # Graph
    Rule(Action.RESYNC, MAIL, status=400, call="page"),
    Rule(Action.SKIP, MAIL, status=404, call="item"),
    # Throttling: wait what the server asks.
    Rule(Action.WAIT, MAIL, status=429),
    Rule(Action.WAIT, MAIL, status=403, reason="rateLimitExceeded"),  # Gmail
    Rule(Action.WAIT, MAIL, status=403, reason="userRateLimitExceeded"),  # Gmail
    Rule(Action.WAIT, MAIL, status=503),
    Rule(Action.WAIT, MAIL, status=504),
    # Transient trouble: back off and try again.
    Rule(Action.RETRY, MAIL, status=500),
    Rule(Action.RETRY, MAIL, status=502),
    Rule(Action.RETRY, MAIL, status=408),
    Rule(Action.RETRY, MAIL, reason=CONNECTION),
    Rule(Action.RETRY, MAIL, reason=TIMEOUT),
    Rule(Action.RETRY, MAIL, reason=TRANSIENT),
    # -- Pipedrive -------------------------------------------------------------------------------
    # The token is refused; 403 is also Pipedrive blocking a client that ignored its 429s.
    Rule(Action.REAUTH, PIPEDRIVE, status=401),
    Rule(Action.REAUTH, PIPEDRIVE, status=403),
    Rule(Action.SKIP, PIPEDRIVE, status=404),  # the record is gone, or never existed
    Rule(Action.SKIP, PIPEDRIVE, status=410),
    # 429: the day's token budget spent (x-daily-ratelimit-token-remaining: 0), else the burst.
    Rule(Action.PARK, PIPEDRIVE, status=429, reason=DAILY_LIMIT),
    Rule(Action.WAIT, PIPEDRIVE, status=429),
    Rule(Action.RETRY, PIPEDRIVE, status=408),
    Rule(Action.RETRY, PIPEDRIVE, status=_5XX),
    Rule(Action.RETRY, PIPEDRIVE, reason=CONNECTION),  # never sent: safe even for a create
    Rule(Action.RETRY, PIPEDRIVE, reason=NO_ANSWER),  # a create is looked up instead
    Rule(Action.RETRY, PIPEDRIVE, reason=TRANSIENT),  # a 2xx without a readable envelope
    Rule(Action.FAIL, PIPEDRIVE, status=400),
    Rule(Action.FAIL, PIPEDRIVE, status=402),  # the company's subscription needs payment
    # -- HubSpot (no client yet) -------------------------------------------------------------------
    # 429 names its policy in the body: "DAILY" (the day's calls spent: DAILY_LIMIT) or the
    # ten-second rolling burst, waited out like Pipedrive's.
    Rule(Action.REAUTH, HUBSPOT, status=401),
    Rule(Action.REAUTH, HUBSPOT, status=403),  # the token lacks a scope: consent again
    Rule(Action.SKIP, HUBSPOT, status=404),
    Rule(Action.PARK, HUBSPOT, status=429, reason=DAILY_LIMIT),
    Rule(Action.WAIT, HUBSPOT, status=429),
    Rule(Action.RETRY, HUBSPOT, status=_5XX),
    Rule(Action.RETRY, HUBSPOT, reason=CONNECTION),
    Rule(Action.RETRY, HUBSPOT, reason=TIMEOUT),
)

# A team connection's mailboxes (Microsoft tenant-wide, Google domain-wide) are read with the
# app's own credentials, not with a grant of the mailbox's: what refuses them is the admin's doing
# (delegation withdrawn, an application permission or the admin consent revoked, the app disabled
# or its secret replaced, the user's Exchange Online mailbox gone). The mailbox needs
# re-authorisation, with the reason; `maillink accounts refresh` checks again with the same
# credentials and makes it active when they work. Consulted before `RULES` for those mailboxes.
TEAM_RULES: tuple[Rule, ...] = (
    # Google: no delegation for the scope; Entra ID: the app disabled or not in the tenant
    # (AADSTS7000112, AADSTS700016).
    Rule(Action.REAUTH, MAIL, reason="unauthorized_client"),
    Rule(Action.REAUTH, GRAPH, reason="invalid_client"),  # the secret expired or replaced
    Rule(Action.REAUTH, GRAPH, reason="invalid_scope"),
    Rule(Action.REAUTH, GRAPH, reason="invalid_resource"),
    # Mail.ReadBasic.All revoked, or an application access policy that leaves the mailbox out.
    Rule(Action.REAUTH, GRAPH, status=403, reason="ErrorAccessDenied"),
    # A user whose Exchange Online mailbox is gone (unlicensed, on-premises, soft-deleted).
    Rule(Action.REAUTH, GRAPH, status=404, reason="MailboxNotEnabledForRESTAPI"),
    Rule(Action.REAUTH, GRAPH, status=404, reason="MailboxNotSupportedForRESTAPI"),
    *RULES,
)


def decide(
    service: str, failure: Failure, call: str | None = None, rules: tuple[Rule, ...] = RULES
) -> Action:
    """What `failure` of a call to `service` means: the first matching rule's action, else FAIL."""
    for rule in rules:
        if rule.matches(service, failure, call):
            return rule.action
    return Action.FAIL


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header, or None when there is no usable hint.

    Both forms of RFC 9110 §10.2.3: delta-seconds ("120") and an HTTP-date ("Wed, 21 Oct 2026
    07:28:00 GMT"). A date already past, or a negative number, means 0; garbage means None.
    """
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


def retry_calls(
    fn: Callable[[], T],
    *,
    attempts: int,
    retryable: Callable[[BaseException], bool],
    delay: Callable[[BaseException, int], float],
    sleep: Callable[[float], None] = time.sleep,
    before_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """`fn()` until it returns, raises an exception `retryable` refuses, or was called `attempts`
    times; the last exception propagates as it was raised.

    `delay(exc, n)` is the pause after the n-th failed attempt (Retry-After or a backoff);
    `before_retry(exc, n, seconds)` is told of each retry (for logs).

    The first attempt is a plain call (most calls succeed: no retry machinery is built for
    them); tenacity runs the retries after a first failure.
    """
    try:
        return fn()
    except BaseException as exc:
        if attempts <= 1 or not retryable(exc):
            raise
        first = exc
    seconds = delay(first, 1)
    if before_retry is not None:
        before_retry(first, 1, seconds)
    sleep(seconds)

    def last(state: tenacity.RetryCallState) -> BaseException | None:
        return state.outcome.exception() if state.outcome else None

    def wait(state: tenacity.RetryCallState) -> float:  # attempt n here is attempt n + 1
        exc = last(state)
        return delay(exc, state.attempt_number + 1) if exc is not None else 0.0

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = last(state)
        if before_retry is not None and exc is not None:
            seconds = state.next_action.sleep if state.next_action else 0.0
            before_retry(exc, state.attempt_number + 1, seconds)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),
        wait=wait,
        stop=tenacity.stop_after_attempt(attempts - 1),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


class TryAgain(Exception):
    """Raised by a call under `retry_answers`: try again after `wait` seconds (None: the
    backoff); `final` is what the caller gets when the attempts run out."""

    def __init__(self, final: Exception, wait: float | None = None):
        super().__init__(str(final))
        self.final = final
        self.wait = wait


def backoff(attempt: int) -> float:
    """The pause after the `attempt`-th failure without a Retry-After: 0.25 s doubling, plus up
    to 0.25 s of jitter, at most 8 s."""
    return min(0.25 * 2 ** (attempt - 1) + random.uniform(0, 0.25), 8.0)


def retry_answers(
    fn: Callable[[], T], *, attempts: int, sleep: Callable[[float], None] = time.sleep
) -> T:
    """`fn()` again while it raises `TryAgain` (after the wait it asks for, else `backoff`), at
    most `attempts` times; then the last `TryAgain`'s `final` is raised. The CRM clients' loop."""

    def delay(exc: BaseException, attempt: int) -> float:
        if isinstance(exc, TryAgain) and exc.wait is not None:
            return exc.wait
        return backoff(attempt)

    try:
        return retry_calls(
            fn,
            attempts=attempts,
            retryable=lambda exc: isinstance(exc, TryAgain),
            delay=delay,
            sleep=sleep,
        )
    except TryAgain as exhausted:
        raise exhausted.final from exhausted
