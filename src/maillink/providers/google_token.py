"""A Gmail mailbox's access token: refreshed when a request needs it, one attempt at a time.

The refresh is maillink's own (one POST to the token endpoint, no retry inside): a 429 or 5xx
from the token endpoint is a `TokenRefused` that the caller's retry policy waits out like any
other answer (`maillink.http_policy`), so a busy token endpoint fails that mailbox's round only.
The access token lives in the google-auth `Credentials` the adapter was given (`token`,
`expiry`). A round refreshes it at its first request once it is nearly spent (`due`): each
mailbox up to `SPREAD` earlier than the last minutes of its validity, at an offset of its own, so
that tokens first obtained together (a fleet's first start) are not all refreshed together again
an hour later, and every hour after.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from google.oauth2.credentials import Credentials

from maillink.http_policy import parse_retry_after

SPREAD = timedelta(minutes=15)

# (url, method, body, headers) → (status, headers with lower-case names, body)
Send = Callable[[str, str, str | None, dict[str, str]], tuple[int, dict[str, str], bytes]]


class TokenRefused(Exception):
    """The token endpoint answered an error (`status`, OAuth `error`, Retry-After seconds)."""

    def __init__(self, status: int, error: str | None, retry_after: float | None) -> None:
        super().__init__(f"token endpoint answered {status} {error or ''}".strip())
        self.status = status
        self.error = error
        self.retry_after = retry_after


def spread(credentials: Credentials) -> timedelta:
    """How much earlier than google-auth's margin this mailbox refreshes: fixed per grant."""
    digest = hashlib.sha256((credentials.refresh_token or "").encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:4], "big") % int(SPREAD.total_seconds()))


def due(credentials: Credentials, early: timedelta, *, now: datetime | None = None) -> bool:
    """Whether the access token must be refreshed before the next request: none, spent, or
    within `early` (and google-auth's own margin) of its expiry."""
    if not credentials.valid:
        return True
    if credentials.expiry is None:
        return False
    at = (now or datetime.now(UTC)).replace(tzinfo=None)
    return bool(at >= credentials.expiry - early)


def refresh(credentials: Credentials, send: Send, *, now: datetime | None = None) -> None:
    """A new access token (and its expiry) into `credentials`, with one token request."""
    form = {
        "grant_type": "refresh_token",
        "client_id": credentials.client_id or "",
        "refresh_token": credentials.refresh_token or "",
    }
    if credentials.client_secret:
        form["client_secret"] = credentials.client_secret
    if credentials.scopes:
        form["scope"] = " ".join(credentials.scopes)
    status, headers, content = send(
        str(credentials.token_uri),
        "POST",
        urlencode(form),
        {"content-type": "application/x-www-form-urlencoded"},
    )
    body = _json(content)
    token = body.get("access_token")
    if status != 200 or not isinstance(token, str) or not token:
        error = body.get("error")
        raise TokenRefused(
            status,
            error if isinstance(error, str) else None,
            parse_retry_after(headers.get("retry-after")),
        )
    try:
        seconds = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        seconds = 3600.0
    start = now or datetime.now(UTC)
    credentials.token = token
    # google-auth compares a naive UTC expiry.
    credentials.expiry = (start + timedelta(seconds=seconds)).replace(tzinfo=None)


def _json(content: bytes) -> dict[str, Any]:
    try:
        found = json.loads(content or b"{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
