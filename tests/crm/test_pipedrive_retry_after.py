"""Pipedrive's Retry-After in both forms of RFC 9110 (delta-seconds and an HTTP-date), over real
HTTP against the Pipedrive sandbox. The waits are recorded, not slept."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from maillink.crm.base import CRMRateLimited, CRMUnavailable
from maillink.crm.pipedrive_http import PipedriveHTTP
from maillink.sandbox._server import Fault
from maillink.sandbox.pipedrive import PipedriveSandbox

TYPES = "/api/v1/activityTypes"


@pytest.fixture(scope="module")
def server() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox() as running:
        yield running


@pytest.fixture
def sandbox(server: PipedriveSandbox) -> PipedriveSandbox:
    server.reset()
    server.burst_per_2s = server.daily_token_budget = None
    return server


def http_date(delta: timedelta) -> str:
    return format_datetime(datetime.now(UTC) + delta, usegmt=True)


def client(sandbox: PipedriveSandbox, sleeps: list[float]) -> PipedriveHTTP:
    return PipedriveHTTP(sandbox.url, api_token=sandbox.api_token, sleep=sleeps.append)


def test_a_503_with_an_http_date_waits_until_that_date(sandbox: PipedriveSandbox) -> None:
    sandbox.faults.add(
        Fault(path=TYPES, status=503, headers={"Retry-After": http_date(timedelta(seconds=20))})
    )
    sleeps: list[float] = []
    client(sandbox, sleeps).call("activityTypes.list", "GET", TYPES)
    assert len(sleeps) == 1
    assert 10 < sleeps[0] <= 20  # the date has whole seconds; the call took some of them
    assert sandbox.meter.statuses[503] == 1


def test_a_503_with_an_http_date_already_past_is_retried_at_once(
    sandbox: PipedriveSandbox,
) -> None:
    sandbox.faults.add(
        Fault(path=TYPES, status=503, headers={"Retry-After": http_date(-timedelta(hours=1))})
    )
    sleeps: list[float] = []
    client(sandbox, sleeps).call("activityTypes.list", "GET", TYPES)
    assert sleeps == [0.0]


def test_a_503_with_an_http_date_too_far_is_unavailable_at_once(
    sandbox: PipedriveSandbox,
) -> None:
    sandbox.faults.add(
        Fault(path=TYPES, status=503, headers={"Retry-After": http_date(timedelta(hours=1))})
    )
    sleeps: list[float] = []
    with pytest.raises(CRMUnavailable, match="retry after"):
        client(sandbox, sleeps).call("activityTypes.list", "GET", TYPES)
    assert sleeps == [] and sandbox.meter.statuses[503] == 1


def test_a_burst_429_with_an_http_date_waits_until_that_date(sandbox: PipedriveSandbox) -> None:
    sandbox.faults.add(
        Fault(path=TYPES, status=429, headers={"Retry-After": http_date(timedelta(seconds=20))})
    )
    sleeps: list[float] = []
    client(sandbox, sleeps).call("activityTypes.list", "GET", TYPES)
    assert len(sleeps) == 1 and 10 < sleeps[0] <= 20


def test_a_daily_429_with_an_http_date_parks_until_that_date(sandbox: PipedriveSandbox) -> None:
    headers = {
        "Retry-After": http_date(timedelta(hours=30)),  # not the next UTC midnight
        "x-daily-ratelimit-token-remaining": "0",
    }
    sandbox.faults.add(Fault(path=TYPES, status=429, headers=headers))
    sleeps: list[float] = []
    with pytest.raises(CRMRateLimited) as raised:
        client(sandbox, sleeps).call("activityTypes.list", "GET", TYPES)
    assert raised.value.daily is True
    assert 29 * 3600 < raised.value.retry_after <= 30 * 3600
    assert sleeps == []


def test_a_503_with_delta_seconds_still_waits_them(sandbox: PipedriveSandbox) -> None:
    sandbox.faults.add(Fault(path=TYPES, status=503, headers={"Retry-After": "7"}))
    sleeps: list[float] = []
    client(sandbox, sleeps).call("activityTypes.list", "GET", TYPES)
    assert sleeps == [7.0]
