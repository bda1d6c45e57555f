"""The HubSpot tests' sandbox: one server per test module on a clock the tests move, emptied
before each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from maillink.crm.activity import draft_for
from maillink.crm.base import ActivityDraft
from maillink.model import Address, Direction, ItemRef, Message
from maillink.sandbox.hubspot import HubSpotSandbox

SENT = datetime(2025, 5, 1, 14, 5, tzinfo=UTC)  # when the tests' emails were sent


def draft(n: int, person_id: int, *items: ItemRef) -> ActivityDraft:
    """The draft of the n-th email from Ann to Alice, for this contact and these items."""
    ann = Address("ann@example.com", "Ann Lee")
    message = Message(
        account="alice@acme.example",
        provider_id=f"p{n}",
        thread_key=f"t{n}",
        message_id=f"<m{n}@example.com>",
        date=SENT + timedelta(minutes=n),
        direction=Direction.INBOUND,
        sender=ann,
        to=(Address("alice@acme.example", "Alice"),),
        subject=f"Quote {n}",
    )
    return draft_for(message, (person_id,), items)


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
