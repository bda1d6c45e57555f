"""The one error policy of every HTTP client: the table's decisions per service, the Retry-After
parser, and the retry loop the clients share."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maillink.http_policy import (
    CONNECTION,
    DAILY_LIMIT,
    GMAIL,
    GRAPH,
    HUBSPOT,
    INVALID_GRANT,
    NO_ANSWER,
    PIPEDRIVE,
    TIMEOUT,
    TRANSIENT,
    Action,
    Failure,
    decide,
    parse_retry_after,
    retry_calls,
)

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)

R, W, P, RS, RA, S, F = (
    Action.RETRY,
    Action.WAIT,
    Action.PARK,
    Action.RESYNC,
    Action.REAUTH,
    Action.SKIP,
    Action.FAIL,
)

# (service, status, reason, kind of call) → action
TABLE: list[tuple[str, int | None, str | None, str | None, Action]] = [
    # Gmail
    (GMAIL, None, INVALID_GRANT, None, RA),
    (GMAIL, 401, "authError", None, RA),
    (GMAIL, 403, "insufficientPermissions", None, RA),
    (GMAIL, 403, "ACCESS_TOKEN_SCOPE_INSUFFICIENT", None, RA),
    (GMAIL, 403, "forbidden", None, F),
    (GMAIL, 403, "rateLimitExceeded", None, W),
    (GMAIL, 403, "userRateLimitExceeded", None, W),
    (GMAIL, 404, "notFound", "history", RS),
    (GMAIL, 404, "notFound", "item", S),
    (GMAIL, 404, "notFound", None, F),
    (GMAIL, 400, "invalidArgument", "page", RS),
    (GMAIL, 400, "invalidArgument", None, F),
    (GMAIL, 429, "rateLimitExceeded", None, W),
    (GMAIL, 500, None, None, R),
    (GMAIL, 502, None, None, R),
    (GMAIL, 503, None, None, W),
    (GMAIL, 504, None, None, W),
    (GMAIL, 408, None, None, R),
    (GMAIL, None, CONNECTION, None, R),
    (GMAIL, None, TIMEOUT, None, R),
    (GMAIL, None, TRANSIENT, None, R),
    (GMAIL, None, "tls", None, F),
    # Microsoft Graph
    (GRAPH, 401, "InvalidAuthenticationToken", None, RA),
    (GRAPH, 410, "syncStateNotFound", None, RS),
    (GRAPH, 400, "syncStateNotFound", None, RS),
    (GRAPH, 400, "resyncRequired", None, RS),
    (GRAPH, 404, "ErrorItemNotFound", "item", S),
    (GRAPH, 403, "ErrorAccessDenied", None, F),
    (GRAPH, 429, "ApplicationThrottled", None, W),
    (GRAPH, 503, None, None, W),
    (GRAPH, 504, None, None, W),
    (GRAPH, 500, None, None, R),
    (GRAPH, None, CONNECTION, None, R),
    # Pipedrive
    (PIPEDRIVE, 400, None, None, F),
    (PIPEDRIVE, 401, None, None, RA),
    (PIPEDRIVE, 402, None, None, F),
    (PIPEDRIVE, 403, None, None, RA),
    (PIPEDRIVE, 404, None, None, S),
    (PIPEDRIVE, 410, None, None, S),
    (PIPEDRIVE, 408, None, None, R),
    (PIPEDRIVE, 422, None, None, F),
    (PIPEDRIVE, 429, None, None, W),
    (PIPEDRIVE, 429, DAILY_LIMIT, None, P),
    (PIPEDRIVE, 500, None, None, R),
    (PIPEDRIVE, 503, None, None, R),
    (PIPEDRIVE, 599, None, None, R),
    (PIPEDRIVE, 302, None, None, F),
    (PIPEDRIVE, None, CONNECTION, None, R),
    (PIPEDRIVE, None, NO_ANSWER, None, R),
    (PIPEDRIVE, 200, TRANSIENT, None, R),
    # HubSpot: the ten-second burst is waited out, the daily limit parks
    (HUBSPOT, 429, None, None, W),
    (HUBSPOT, 429, DAILY_LIMIT, None, P),
    (HUBSPOT, 401, None, None, RA),
    (HUBSPOT, 404, None, None, S),
    (HUBSPOT, 502, None, None, R),
    (HUBSPOT, 400, None, None, F),
    # a service the table does not know: nothing is retried
    ("unknown", 503, None, None, F),
]


@pytest.mark.parametrize(("service", "status", "reason", "call", "action"), TABLE)
def test_the_table_says_what_each_failure_of_each_service_means(
    service: str, status: int | None, reason: str | None, call: str | None, action: Action
) -> None:
    assert decide(service, Failure(status, reason), call) is action


def test_the_same_status_means_what_each_service_says() -> None:
    # 403: Gmail's plain refusal fails, Pipedrive's means the token must change.
    assert decide(GMAIL, Failure(403, "forbidden")) is Action.FAIL
    assert decide(PIPEDRIVE, Failure(403)) is Action.REAUTH
    # 503: the mail providers are throttling; Pipedrive is in trouble (retry, Retry-After or not).
    assert decide(GRAPH, Failure(503)) is Action.WAIT
    assert decide(PIPEDRIVE, Failure(503)) is Action.RETRY


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Thu, 03 Dec 2026 15:00:30 GMT", 30.0),  # an HTTP-date ahead
        ("Thursday, 03-Dec-26 15:02:00 GMT", 120.0),  # the obsolete RFC 850 form
        ("Thu, 03 Dec 2026 14:00:00 GMT", 0.0),  # a date already past
        ("Thu, 03 Dec 2026 15:01:00 +0000", 60.0),
        ("soon", None),
        ("Thu, 99 Foo 2026 25:00:00 GMT", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_in_seconds_or_as_an_http_date(
    value: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


class Boom(Exception):
    pass


def test_the_retry_loop_retries_what_it_is_told_waiting_what_it_is_told() -> None:
    sleeps: list[float] = []
    told: list[tuple[int, float]] = []
    answers: list[Exception | str] = [Boom(), Boom(), "ok"]

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    result = retry_calls(
        flaky,
        attempts=3,
        retryable=lambda exc: isinstance(exc, Boom),
        delay=lambda exc, attempt: attempt * 10.0,
        sleep=sleeps.append,
        before_retry=lambda exc, attempt, seconds: told.append((attempt, seconds)),
    )
    assert result == "ok"
    assert sleeps == [10.0, 20.0]
    assert told == [(1, 10.0), (2, 20.0)]


def test_the_retry_loop_raises_the_last_failure_or_one_it_must_not_retry() -> None:
    sleeps: list[float] = []
    calls: list[int] = []

    def always(exc: Exception) -> None:
        calls.append(1)
        raise exc

    with pytest.raises(Boom):
        retry_calls(
            lambda: always(Boom()),
            attempts=3,
            retryable=lambda exc: isinstance(exc, Boom),
            delay=lambda exc, attempt: 0.0,
            sleep=sleeps.append,
        )
    assert len(calls) == 3 and sleeps == [0.0, 0.0]

    calls.clear()
    with pytest.raises(KeyError):
        retry_calls(
            lambda: always(KeyError("a bug")),
            attempts=3,
            retryable=lambda exc: isinstance(exc, Boom),
            delay=lambda exc, attempt: 0.0,
            sleep=sleeps.append,
        )
    assert len(calls) == 1


def test_one_policy_module_holds_the_retry_loop_and_the_actions() -> None:
    """No client keeps a retry loop or an action table of its own."""
    src = Path(__file__).resolve().parents[1] / "src" / "maillink"
    tenacity_users, action_enums = set(), set()
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        name = path.relative_to(src).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or ""]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                imported = []
            if any(module.split(".")[0] == "tenacity" for module in imported):
                tenacity_users.add(name)
            if isinstance(node, ast.ClassDef) and node.name == "Action":
                action_enums.add(name)
    assert tenacity_users == {"http_policy.py"}
    assert action_enums == {"http_policy.py"}
