"""The providers' error policy: the table's decisions, and how calls run under it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import httplib2
import pytest
from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from maillink.http_policy import (
    CONNECTION,
    INVALID_GRANT,
    TIMEOUT,
    Action,
    Failure,
    parse_retry_after,
)
from maillink.providers.base import NeedsReauth, ProviderError
from maillink.providers.gmail_api import classify
from maillink.providers.retry import ItemGone, ResyncRequired, RetryPolicy, Throttled


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Boom(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


def by_failure(exc: BaseException) -> Failure | None:
    return exc.failure if isinstance(exc, Boom) else None


@pytest.mark.parametrize(
    ("failure", "call", "action"),
    [
        (Failure(429), None, Action.WAIT),
        (Failure(503), None, Action.WAIT),
        (Failure(403, "rateLimitExceeded"), None, Action.WAIT),
        (Failure(403, "userRateLimitExceeded"), None, Action.WAIT),
        (Failure(500), None, Action.RETRY),
        (Failure(502), None, Action.RETRY),
        (Failure(None, CONNECTION), None, Action.RETRY),
        (Failure(None, TIMEOUT), None, Action.RETRY),
        (Failure(None, INVALID_GRANT), None, Action.REAUTH),
        (Failure(401, "authError"), None, Action.REAUTH),
        (Failure(403, "insufficientPermissions"), None, Action.REAUTH),
        (Failure(403, "forbidden"), None, Action.FAIL),
        (Failure(404, "notFound"), "history", Action.RESYNC),
        (Failure(404, "notFound"), "item", Action.SKIP),
        (Failure(404, "notFound"), None, Action.FAIL),
        (Failure(400, "invalidArgument"), "page", Action.RESYNC),
        (Failure(400, "invalidArgument"), None, Action.FAIL),
        (Failure(410), None, Action.RESYNC),
        (Failure(400, "syncStateNotFound"), None, Action.RESYNC),
        (Failure(None, "tls"), None, Action.FAIL),
    ],
)
def test_the_table_says_what_each_failure_means(
    failure: Failure, call: str | None, action: Action
) -> None:
    assert RetryPolicy().action(failure, call) is action


def test_a_transient_failure_is_retried_with_growing_jittered_backoff() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(sleep=sleeps, attempts=4, backoff=1.0, max_backoff=3.0)
    answers: list[Exception | str] = [
        Boom(Failure(500)),
        Boom(Failure(None, CONNECTION)),
        Boom(Failure(502)),
        "ok",
    ]

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert policy.call(flaky, classify=by_failure) == "ok"
    assert len(sleeps) == 3
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0 and 0 <= sleeps[2] <= 3.0


def test_retry_after_is_waited_and_exhaustion_raises_throttled() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(sleep=sleeps, attempts=3)

    def throttled() -> None:
        raise Boom(Failure(429, "rateLimitExceeded", retry_after=2.0))

    with pytest.raises(Throttled) as caught:
        policy.call(throttled, classify=by_failure, what="gmail messages.list")
    assert sleeps == [2.0, 2.0]
    assert caught.value.retry_after == 2.0
    assert "after 3 attempts" in str(caught.value)


def test_a_retry_after_too_long_to_wait_raises_at_once() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(sleep=sleeps, max_retry_after=60)

    def throttled() -> None:
        raise Boom(Failure(429, retry_after=3600.0))

    with pytest.raises(Throttled) as caught:
        policy.call(throttled, classify=by_failure)
    assert sleeps == []
    assert caught.value.retry_after == 3600.0


@pytest.mark.parametrize(
    ("failure", "call", "error"),
    [
        (Failure(None, INVALID_GRANT), None, NeedsReauth),
        (Failure(404), "history", ResyncRequired),
        (Failure(404), "item", ItemGone),
        (Failure(400), None, ProviderError),
    ],
)
def test_failures_not_retried_raise_what_they_mean_at_once(
    failure: Failure, call: str | None, error: type[Exception]
) -> None:
    sleeps = Sleeps()
    attempts = []

    def fails() -> None:
        attempts.append(1)
        raise Boom(failure)

    with pytest.raises(error):
        RetryPolicy(sleep=sleeps).call(fails, classify=by_failure, call=call)
    assert len(attempts) == 1 and sleeps == []


def test_an_exception_that_is_not_a_provider_failure_passes_through() -> None:
    def bug() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        RetryPolicy().call(bug, classify=by_failure)


def test_batch_parts_are_resent_alone_and_gone_parts_returned() -> None:
    sleeps = Sleeps()
    sent: list[list[str]] = []
    answers: list[Mapping[str, Failure]] = [
        {"b": Failure(429, retry_after=1.0), "c": Failure(404), "d": Failure(500)},
        {"d": Failure(503, retry_after=4.0)},
        {},
    ]

    def send(parts: Sequence[str]) -> Mapping[str, Failure]:
        sent.append(list(parts))
        return answers.pop(0)

    gone = RetryPolicy(sleep=sleeps).call_parts(["a", "b", "c", "d"], send, call="item")

    assert gone == {"c"}
    assert sent == [["a", "b", "c", "d"], ["b", "d"], ["d"]]
    assert sleeps[0] >= 1.0 and sleeps[1] == 4.0


def test_a_batch_part_that_keeps_failing_is_never_dropped_silently() -> None:
    def send(parts: Sequence[str]) -> Mapping[str, Failure]:
        return {"b": Failure(500)}

    with pytest.raises(ProviderError, match="500"):
        RetryPolicy(sleep=Sleeps(), attempts=3).call_parts(["a", "b"], send, call="item")
    with pytest.raises(NeedsReauth):
        RetryPolicy(sleep=Sleeps()).call_parts(
            ["a"], lambda parts: {"a": Failure(401)}, call="item"
        )


def test_retry_after_header_values() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def http_error(status: int, body: bytes, **headers: str) -> HttpError:
    return HttpError(httplib2.Response({"status": status, **headers}), body, uri="https://x")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            http_error(
                429,
                b'{"error": {"code": 429, "message": "Quota", "errors": [{"reason": "rateLimitExceeded"}]}}',
                **{"retry-after": "2"},
            ),
            Failure(429, "rateLimitExceeded", 2.0, "Quota"),
        ),
        (
            http_error(404, b'{"error": {"code": 404, "status": "NOT_FOUND", "message": "gone"}}'),
            Failure(404, "NOT_FOUND", None, "gone"),
        ),
        (http_error(502, b"<html>bad gateway</html>"), Failure(502)),
        (
            auth_exceptions.RefreshError(
                "invalid_grant: Token has been expired or revoked.", {"error": "invalid_grant"}
            ),
            Failure(None, INVALID_GRANT, detail="token refresh refused"),
        ),
        (ConnectionResetError(), Failure(None, CONNECTION, detail="ConnectionResetError")),
        (TimeoutError(), Failure(None, TIMEOUT, detail="TimeoutError")),
        (httplib2.ServerNotFoundError(), Failure(None, CONNECTION, detail="ServerNotFoundError")),
        (ValueError("a bug"), None),
    ],
)
def test_gmail_exceptions_are_classified(exc: BaseException, expected: Failure | None) -> None:
    assert classify(exc) == expected
