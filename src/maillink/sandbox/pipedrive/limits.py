"""Pipedrive's rate limits as the sandbox applies them: a rolling 2-second burst window per token
(with its x-ratelimit-* headers) and a daily token budget that resets at UTC midnight."""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime, timedelta

from maillink.sandbox.pipedrive.query import ApiError

BURST_WINDOW = 2.0  # seconds: Pipedrive's rolling burst window


def check_burst(window: deque[float], limit: int, now: float, headers: dict[str, str]) -> None:
    """Drop the window's calls older than the burst window, put its rate headers in `headers`,
    and refuse the call (429 with Retry-After) when the window is full."""
    while window and window[0] <= now - BURST_WINDOW:
        window.popleft()
    reset = max(1, math.ceil(BURST_WINDOW - (now - window[0]))) if window else 2
    headers.update(
        {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - len(window) - 1)),
            "x-ratelimit-reset": str(reset),
        }
    )
    if len(window) >= limit:
        headers.update({"x-ratelimit-remaining": "0", "Retry-After": str(reset)})
        raise ApiError(429, "Request over limit", headers)


def seconds_to_utc_midnight() -> int:
    now_utc = datetime.now(UTC)
    midnight = datetime.combine(now_utc.date() + timedelta(days=1), datetime.min.time(), UTC)
    return math.ceil((midnight - now_utc).total_seconds())
