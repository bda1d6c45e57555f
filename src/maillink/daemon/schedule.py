"""When a mailbox is due next: an interval after its last due time, backoff after errors.

A mailbox on time keeps its own rhythm: its next run is its due time plus the interval, moved by
up to half the jitter either way (so mailboxes drift apart rather than run in lockstep, and on
average a round starts every interval, however long the rounds take or however late one was
picked up). A mailbox run late, or for the first time, starts a new rhythm: the interval and up
to the whole jitter after the end of its round.

Pure: takes the time and the count of failed rounds, returns a time. The daemon stores the result
in the mailbox's lease row (`next_run_at`), which every daemon sharing the store reads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

BACKOFF_BASE_SECONDS = 60.0  # the first pause after an error, unless the interval is shorter


@dataclass(frozen=True)
class Schedule:
    interval: float  # seconds between the rounds of a healthy mailbox
    jitter: float = 0.0  # seconds of spread, so mailboxes do not run in lockstep
    max_backoff: float = 3600.0  # the longest pause after errors

    def after_success(
        self, now: datetime, rng: random.Random | None = None, *, due: datetime | None = None
    ) -> datetime:
        """The next run after a good round that ends `now`; `due`: when this round was due
        (None: not known, or it was run before it was due)."""
        spread = self._jitter(rng)
        if due is not None:
            on_time = due + timedelta(seconds=self.interval + spread - self.jitter / 2)
            if on_time > now:
                return on_time
        return now + timedelta(seconds=self.interval + spread)

    def backoff(self, failures: int) -> float:
        """Seconds of pause after `failures` failed rounds in a row: doubling, capped."""
        base = min(self.interval, BACKOFF_BASE_SECONDS)
        return min(self.max_backoff, base * 2 ** min(max(failures, 1) - 1, 32))

    def after_failure(
        self,
        now: datetime,
        failures: int,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> datetime:
        """The next run after the `failures`-th failed round in a row; a provider's Retry-After
        is honoured even past the cap (it knows when it will answer again)."""
        delay = self.backoff(failures)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return now + timedelta(seconds=delay + self._jitter(rng))

    def _jitter(self, rng: random.Random | None) -> float:
        if self.jitter <= 0:
            return 0.0
        return (rng or random).uniform(0, self.jitter)
