"""A Gmail mailbox's access token: refreshed when a request needs it, one attempt at a time.

The refresh is maillink's own (one POST to the token endpoint, no retry inside): a 429 or 5xx
from the token endpoint is a `TokenRefused` that the caller's retry policy waits out like any
other answer (`maillink.http_policy`), so a busy token endpoint fails that mailbox's round only.
The access token lives in the google-auth `Credentials` the adapter was given (`token`,
`expiry`). A round refreshes it at its first request once it is nearly spent (`due`): each
mailbox up to `SPREAD` earlier than the last minutes of its validity, at an offset of its own, so
that tokens first obtained together (a fleet's first start) are not all refreshed together again
an hour later, and every hour after.

A Workspace mailbox connected domain-wide holds google-auth's service-account `Credentials` with
the mailbox as `subject`: its refresh is the JWT bearer grant (RFC 7523), an assertion signed by
the service account's key, sent and refused the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from google.oauth2 import service_account
from google.oauth2.credentials import Credentials

from maillink.http_policy import parse_retry_after

SPREAD = timedelta(minutes=15)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

# A mailbox's own grant (refresh token), or a service account's delegation (domain-wide).
GoogleCredentials = Credentials | service_account.Credentials

# (url, method, body, headers) → (status, headers with lower-case names, body)
Send = Callable[[str, str, str | None, dict[str, str]], tuple[int, dict[str, str], bytes]]


class TokenRefused(Exception):
    """The token endpoint answered an error (`status`, OAuth `error`, Retry-After seconds)."""

    def __init__(self, status: int, error: str | None, retry_after: float | None) -> None:
        super().__init__(f"token endpoint answered {status} {error or ''}".strip())
        self.status = status
        self.error = error
        self.retry_after = retry_after


def spread(credentials: GoogleCredentials) -> timedelta:
    """How much earlier than google-auth's margin this mailbox refreshes: fixed per grant."""
    if isinstance(credentials, service_account.Credentials):
        seed = f"{credentials.service_account_email} {delegated_subject(credentials)}"
    else:
        seed = credentials.refresh_token or ""
    digest = hashlib.sha256(seed.encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:4], "big") % int(SPREAD.total_seconds()))


def delegated_subject(credentials: service_account.Credentials) -> str:
    """The user a service account's credentials impersonate ("" for none)."""
    return str(getattr(credentials, "_subject", None) or "")


def due(credentials: GoogleCredentials, early: timedelta, *, now: datetime | None = None) -> bool:
    """Whether the access token must be refreshed before the next request: none, spent, or
    within `early` (and google-auth's own margin) of its expiry."""
    if not credentials.valid:
        return True
    if credentials.expiry is None:
        return False
    at = (now or datetime.now(UTC)).replace(tzinfo=None)
    return bool(at >= credentials.expiry - early)


def refresh(credentials: GoogleCredentials, send: Send, *, now: datetime | None = None) -> None:
    """A new access token (and its expiry) into `credentials`, with one token request."""
    if isinstance(credentials, service_account.Credentials):
        # google-auth's own assertion (iss, sub, scope, aud, iat, exp), signed with the key.
        assertion = credentials._make_authorization_grant_assertion()
        form = {"grant_type": JWT_BEARER, "assertion": _text(assertion)}
        token_uri = str(credentials._token_uri)
    else:
        form = {
            "grant_type": "refresh_token",
            "client_id": credentials.client_id or "",
            "refresh_token": credentials.refresh_token or "",
        }
        if credentials.client_secret:
            form["client_secret"] = credentials.client_secret
        if credentials.scopes:
            form["scope"] = " ".join(credentials.scopes)
        token_uri = str(credentials.token_uri)
    status, headers, content = send(
        token_uri,
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


def _text(value: str | bytes) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _json(content: bytes) -> dict[str, Any]:
    try:
        found = json.loads(content or b"{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
