"""The HubSpot tests' sandbox: one server per test module on a clock the tests move, emptied
before each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from maillink.sandbox.hubspot import HubSpotSandbox


class Clock:
    """The sandbox's time, moved by the tests; back at `start` before each test."""

    def __init__(self, start: datetime) -> None:
        self.start = self.now = start

    def __call__(self) -> datetime:
        return self.now


def sandbox_fixtures(start: datetime, *, unlimited: bool = False) -> tuple[Callable[..., Any], ...]:
    """The `clock`, `server` and `sandbox` fixtures of a test module (assign them to those
    names). `unlimited`: the sandbox's rate limits are off in every test."""

    @pytest.fixture(scope="module")
    def clock() -> Clock:
        return Clock(start)

    @pytest.fixture(scope="module")
    def server(clock: Clock) -> Iterator[HubSpotSandbox]:
        with HubSpotSandbox(clock=clock) as running:
            yield running

    @pytest.fixture
    def sandbox(server: HubSpotSandbox, clock: Clock) -> HubSpotSandbox:
        """The module's sandbox, emptied, at the module's start time."""
        clock.now = clock.start
        server.reset()
        if unlimited:
            limits = server.limits
            limits.burst_per_10s = limits.daily = limits.search_per_second = None
        return server

    return clock, server, sandbox
