"""Quota-aware pacing: each mailbox spends its provider quota at a steady rate, never in bursts
that end in 429s (docs/configuration.md, [gmail] and [microsoft]).

A `Pacer` is a token bucket of quota units (Gmail) or requests (Graph): it refills at the
configured rate and holds at most `burst` units, so that the provider, which enforces its own
moving window, never sees more than it allows. A call waits for its units before it is sent; a
batch is cut so that no request costs more than the bucket holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

# Gmail's quota units per method ([gmail] quota_model): Google's model until 2025, and the 2026 one.
GMAIL_UNITS: Mapping[str, Mapping[str, int]] = {
    "2025": {
        "users.getProfile": 1,
        "messages.list": 5,
        "messages.get": 5,
        "threads.get": 10,
        "history.list": 2,
    },
    "2026": {
        "users.getProfile": 1,
        "messages.list": 5,
        "messages.get": 20,
        "threads.get": 40,
        "history.list": 2,
    },
}
_SLACK = 1e-6  # units: float rounding must not leave a call waiting for a sliver forever


class Pacer:
    """A token bucket: `rate` units a second, at most `burst` units saved up. Thread-safe.

    `take(units)` waits until the bucket holds them (or is full, for a request that costs more
    than a full bucket: it then goes into debt, which later calls wait out), so that over any
    stretch of time no more than `burst + rate × seconds` units are spent.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0 or not burst > 0:
            raise ValueError("a pacer needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = burst
        self._last = clock()
        self.waited = 0.0  # seconds spent waiting, all calls together

    @classmethod
    def per_minute(
        cls,
        units: float,
        *,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Pacer:
        """`units` a minute, saving up at most `burst_seconds` of them (Google enforces its
        per-minute quota per second too: 250 units/s a user)."""
        rate = units / 60.0
        return cls(rate, rate * burst_seconds, clock=clock, sleep=sleep)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, units: float) -> float:
        """Wait until `units` may be spent, spend them; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                needed = min(units, self.burst)
                if self._tokens >= needed - _SLACK:
                    self._tokens -= units
                    self.waited += waited
                    return waited
                pause = (needed - self._tokens) / self.rate
            self._sleep(pause)
            waited += pause

    def full(self) -> bool:
        """Whether the bucket is full again: the pacer is then as good as a new one."""
        with self._lock:
            self._refill()
            return self._tokens >= self.burst - _SLACK


class Pacers:
    """One pacer per mailbox while it spends (rounds come and go); a pacer whose bucket is full
    again is as good as a new one, so idle mailboxes' pacers are dropped now and then (every
    `sweep_every` new pacers): the process keeps none per idle mailbox."""

    def __init__(self, make: Callable[[], Pacer], *, sweep_every: int = 256) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pacers: dict[str, Pacer] = {}
        self._sweep_every = sweep_every
        self._made = 0

    def for_mailbox(self, email: str) -> Pacer:
        key = email.strip().lower()
        with self._lock:
            found = self._pacers.get(key)
            if found is None:
                self._made += 1
                if self._made % self._sweep_every == 0:
                    for name in [n for n, p in self._pacers.items() if p.full()]:
                        del self._pacers[name]
                found = self._pacers[key] = self._make()
            return found

    def __len__(self) -> int:
        with self._lock:
            return len(self._pacers)
