"""HubSpot's rate limits as the sandbox applies them.

- The burst: requests per rolling 10 seconds per app (a private app's token, or a public app's
  OAuth tokens), answered with X-HubSpot-RateLimit-Max / -Remaining / -Interval-Milliseconds.
- The daily limit of a private app, answered with X-HubSpot-RateLimit-Daily / -Daily-Remaining
  (HubSpot sends those two to private apps only); it resets at midnight.
- The search endpoints' own limit: requests per second per account. Their answers carry none of
  the headers above, and a refused search does not count against the burst.

HubSpot (private apps): 100 requests / 10 s and 250,000 a day on Free and Starter, 190 / 10 s and
625,000 on Professional, 1,000,000 on Enterprise; public apps 110 / 10 s per account; search 5/s.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from maillink.sandbox.hubspot.errors import DAILY, SECONDLY, TEN_SECONDLY_ROLLING, RateLimited

BURST_WINDOW = 10.0  # seconds
SEARCH_WINDOW = 1.0
HUBSPOT_PRIVATE_APP_BURST = 100
HUBSPOT_PUBLIC_APP_BURST = 110
HUBSPOT_DAILY = 250_000
HUBSPOT_SEARCH_PER_SECOND = 5


@dataclass
class Limits:
    """The limits in force (None: unlimited) and the windows that count against them."""

    burst_per_10s: int | None = None
    daily: int | None = None
    search_per_second: int | None = None
    used_today: dict[str, int] = field(default_factory=dict)
    _windows: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()
            self.used_today.clear()

    def reset_daily(self) -> None:
        with self._lock:
            self.used_today.clear()

    def admit(self, app: str, *, search: bool, private: bool, now: float) -> dict[str, str]:
        """Count the call against the limits, or raise the 429 HubSpot would answer; returns
        the rate-limit headers of the answer."""
        with self._lock:
            if search:
                self._admit_search(now, app, private)
                return {}
            headers: dict[str, str] = {}
            window = self._window(f"burst:{app}", now, BURST_WINDOW)
            if self.burst_per_10s is not None:
                headers.update(
                    {
                        "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(BURST_WINDOW * 1000)),
                        "X-HubSpot-RateLimit-Max": str(self.burst_per_10s),
                        "X-HubSpot-RateLimit-Remaining": "0",
                    }
                )
                if len(window) >= self.burst_per_10s:
                    raise RateLimited(
                        TEN_SECONDLY_ROLLING,
                        "You have reached your ten_secondly_rolling limit.",
                        headers,
                    )
            used = self.used_today.get(app, 0)
            if private and self.daily is not None:
                headers["X-HubSpot-RateLimit-Daily"] = str(self.daily)
                headers["X-HubSpot-RateLimit-Daily-Remaining"] = "0"
                if used >= self.daily:
                    raise RateLimited(DAILY, "You have reached your daily limit.", headers)
                headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(self.daily - used - 1)
            window.append(now)
            self.used_today[app] = used + 1
            if self.burst_per_10s is not None:
                left = max(0, self.burst_per_10s - len(window))
                headers["X-HubSpot-RateLimit-Remaining"] = str(left)
            return headers

    def _admit_search(self, now: float, app: str, private: bool) -> None:
        """Searches count against the day too, but answer no rate-limit headers."""
        window = self._window("search", now, SEARCH_WINDOW)
        if self.search_per_second is not None and len(window) >= self.search_per_second:
            raise RateLimited(SECONDLY, "You have reached your secondly limit.")
        used = self.used_today.get(app, 0)
        if private and self.daily is not None and used >= self.daily:
            raise RateLimited(DAILY, "You have reached your daily limit.")
        window.append(now)
        self.used_today[app] = used + 1

    def _window(self, key: str, now: float, span: float) -> deque[float]:
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - span:
            window.popleft()
        return window
