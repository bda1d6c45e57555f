"""Quota-aware pacing: a mailbox spends its quota at a steady rate and never bounces off 429s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.oauth2.credentials import Credentials

from maillink.providers.gmail import GmailProvider
from maillink.providers.gmail_api import SCOPE_METADATA, Get, GmailApi
from maillink.providers.pacing import GMAIL_UNITS, Pacer, Pacers
from maillink.providers.retry import RetryPolicy
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.google.gmail import QuotaBuckets

REP = "rep@acme.example"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_full_bucket_lets_a_burst_through_then_the_rate_holds() -> None:
    t = FakeTime()
    pacer = Pacer.per_minute(600, burst_seconds=1.0, clock=t.clock, sleep=t.sleep)  # 10/s
    for _ in range(10):
        assert pacer.take(1) == 0.0  # the burst: one second's worth
    for _ in range(50):
        pacer.take(1)
    assert t.now == pytest.approx(5.0)  # then 10 units a second, exactly
    assert pacer.waited == pytest.approx(5.0)


def test_a_call_costing_more_than_the_bucket_waits_for_a_full_one_then_owes_the_rest() -> None:
    t = FakeTime()
    pacer = Pacer(10.0, 20.0, clock=t.clock, sleep=t.sleep)
    pacer.take(20)
    pacer.take(50)  # waits for a full bucket (2 s), then is 30 units in debt
    assert t.now == pytest.approx(2.0)
    pacer.take(10)  # the debt is paid first: 3 s, then 1 s for its own units
    assert t.now == pytest.approx(6.0)


def test_over_any_stretch_no_more_than_burst_plus_rate_units_are_spent() -> None:
    t = FakeTime()
    pacer = Pacer(25.0, 50.0, clock=t.clock, sleep=t.sleep)
    spent: list[tuple[float, int]] = []
    for units in [5, 10, 40, 1, 50, 7, 30] * 20:
        pacer.take(units)
        spent.append((t.now, units))
    for i, (start, _) in enumerate(spent):
        for end, _ in spent[i:]:
            total = sum(u for when, u in spent if start <= when <= end)
            assert total <= 50 + 50 + 25 * (end - start) + 1e-6  # burst, one call's debt, rate


def test_each_mailbox_has_its_own_pacer_for_the_life_of_the_process() -> None:
    pacers = Pacers(lambda: Pacer(1.0, 1.0))
    assert pacers.for_mailbox("A@x.example") is pacers.for_mailbox("a@x.example")
    assert pacers.for_mailbox("a@x.example") is not pacers.for_mailbox("b@x.example")


def test_the_2026_model_costs_four_times_as_much_a_read() -> None:
    assert GMAIL_UNITS["2026"]["messages.get"] == 4 * GMAIL_UNITS["2025"]["messages.get"]
    assert GMAIL_UNITS["2026"]["threads.get"] == 4 * GMAIL_UNITS["2025"]["threads.get"]


def _credentials(google: GoogleSandbox) -> Credentials:
    return Credentials(
        None,
        refresh_token=google.issue_refresh_token(REP),
        token_uri=google.token_uri,
        client_id=google.client_id,
        client_secret=google.client_secret,
        scopes=[SCOPE_METADATA],
    )


def test_batches_are_cut_to_what_the_bucket_lets_through_at_once() -> None:
    with GoogleSandbox() as google:
        google.add_mailbox(REP)
        api = GmailApi(
            _credentials(google),
            api_endpoint=google.api_endpoint,
            http_timeout=10,
            batch_size=50,
            policy=RetryPolicy(),
            pacer=Pacer(100.0, 100.0),
        )
        gets = [Get("thread", str(i)) for i in range(30)] + [Get("message", "m")]
        batches = api.batches(gets)
        assert [len(b) for b in batches] == [10, 10, 10, 1]
        unpaced = GmailApi(
            _credentials(google),
            api_endpoint=google.api_endpoint,
            http_timeout=10,
            batch_size=50,
            policy=RetryPolicy(),
            quota_model="2026",
        )
        assert [len(b) for b in unpaced.batches(gets)] == [31]


class _Nothing:
    def known_messages(self, ids: object) -> set[str]:
        return set()

    def thread_dates(self, keys: object) -> dict[str, datetime]:
        return {}


def test_the_pacer_is_charged_the_costs_of_the_configured_model() -> None:
    taken: list[float] = []

    class Recording(Pacer):
        def take(self, units: float) -> float:
            taken.append(units)
            return 0.0

    with GoogleSandbox() as google:
        google.add_mailbox(REP)
        first = google.add_message(REP, headers=[("Subject", "a")], internal_date=datetime.now(UTC))
        for model, cost in (("2025", 10 + 5), ("2026", 40 + 20)):
            api = GmailApi(
                _credentials(google),
                api_endpoint=google.api_endpoint,
                http_timeout=10,
                batch_size=50,
                policy=RetryPolicy(),
                pacer=Recording(1000.0, 1000.0),
                quota_model=model,
            )
            taken.clear()
            api.get_many([Get("thread", first), Get("message", first)])
            assert taken == [cost]


def test_a_paced_backfill_runs_near_the_quota_without_a_single_429() -> None:
    quota = 200.0  # units a second, enforced by the sandbox per mailbox
    # One clock for the sandbox's quota and the pacer, moved on only by the pacer's sleeps: the
    # rate is measured in that clock's seconds, whatever the machine's load (and at once).
    fake = FakeTime()
    with GoogleSandbox(quota_units_per_second=quota) as google:
        google._context.quota = QuotaBuckets(quota, clock=fake.clock)
        google.add_mailbox(REP)
        start = datetime(2025, 1, 6, tzinfo=UTC)
        for t in range(80):
            thread = None
            for k in range(2):
                added = google.add_message(
                    REP,
                    headers=[("From", "ann@client.example"), ("Subject", f"t{t}")],
                    internal_date=start + timedelta(hours=t, minutes=k),
                    thread_id=thread,
                )
                thread = thread or added
        pacer = Pacer.per_minute(quota * 60 * 0.95, clock=fake.clock, sleep=fake.sleep)
        gmail = GmailProvider(
            REP,
            _credentials(google),
            api_endpoint=google.api_endpoint,
            page_size=40,
            pacer=pacer,
            prefetch=True,
        )
        messages = sum(len(page.messages) for page in gmail.pull(None, _Nothing()))
        seconds = fake.now
    assert messages == 160
    assert google.meter.statuses[429] == 0
    # past the first second's burst, the rate is the pacer's: 95% of the quota
    used = (google.meter.total_units - pacer.burst) / seconds / quota
    assert 0.85 < used <= 0.96, used


def test_the_pacers_of_idle_mailboxes_are_dropped_now_and_then() -> None:
    now = [0.0]
    pacers = Pacers(lambda: Pacer(10.0, 10.0, clock=lambda: now[0]), sweep_every=4)
    busy = pacers.for_mailbox("busy@example.com")
    busy.take(10)  # its bucket is empty: it must be kept
    for i in range(3):
        pacers.for_mailbox(f"idle{i}@example.com")  # full buckets: as good as new ones

    assert len(pacers) == 2  # the 4th new pacer swept the idle ones made before it
    assert pacers.for_mailbox("Busy@example.com") is busy
    now[0] = 1.0  # refilled: now the busy one is idle too
    for i in range(3, 7):
        pacers.for_mailbox(f"idle{i}@example.com")
    assert len(pacers) == 1  # the 8th swept every pacer before it: all full again
    assert pacers.for_mailbox("busy@example.com") is not busy
