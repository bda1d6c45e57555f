"""A Gmail mailbox's access token: refreshed when a request needs it, one attempt at a time.

The refresh is maillink's own (one POST to the token endpoint, no retry inside): a 429 or 5xx
from the token endpoint is a `TokenRefused` that the caller's retry policy waits out like any
other answer (`maillink.http_policy`), so a busy token endpoint fails that mailbox's round only.
The access token lives in the google-auth `Credentials` the adapter was given (`token`,
`expiry`). A round refreshes it at its first request once it is nearly spent (`due`): each
mailbox up to `SPREAD` earlier than the last minutes of its validity, at an offset of its own, so
that tokens first obtained together (a fleet's first start) are not all refreshed together again
an hour later, and every hour after.

A Workspace mailbox connected domain-wide holds `DelegatedCredentials`: the service account's
signer (google-auth's public `Signer`), the mailbox as subject and the key's token endpoint. Its
refresh is the JWT bearer grant (RFC 7523): an assertion (iss, scope, aud, iat, exp, sub) signed
with `google.auth.jwt.encode`, sent and refused the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from google.auth import credentials as auth_credentials
from google.auth import crypt, jwt
from google.auth import exceptions as auth_exceptions
from google.oauth2.credentials import Credentials

from maillink.http_policy import parse_retry_after

SPREAD = timedelta(minutes=15)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # seconds: Google accepts assertions of at most an hour


class DelegatedCredentials(auth_credentials.Credentials):
    """A service account impersonating `subject` for `scopes`: what its JWT bearer grant needs
    (the signer, the account's email, the key's token endpoint), and the access token it got
    (`token`, `expiry`, `valid`, as google-auth's credentials keep them)."""

    def __init__(
        self,
        signer: crypt.Signer,
        service_account_email: str,
        token_uri: str,
        subject: str,
        scopes: Sequence[str],
    ) -> None:
        super().__init__()
        self.signer = signer
        self.service_account_email = service_account_email
        self.token_uri = token_uri
        self.subject = subject
        self.scopes = tuple(scopes)

    def assertion(self, now: datetime) -> str:
        """The signed JWT bearer assertion (RFC 7523 §3, as Google documents it)."""
        issued = int(now.timestamp())
        payload = {
            "iss": self.service_account_email,
            "scope": " ".join(self.scopes),
            "aud": self.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
            "sub": self.subject,
        }
        return _text(jwt.encode(self.signer, payload))

    def refresh(self, request: Any) -> None:
        raise auth_exceptions.RefreshError(
            "refreshed by maillink.providers.google_token.refresh, not by google-auth"
        )


# A mailbox's own grant (refresh token), or a service account's delegation (domain-wide).
GoogleCredentials = Credentials | DelegatedCredentials

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
    if isinstance(credentials, DelegatedCredentials):
        seed = f"{credentials.service_account_email} {credentials.subject}"
    else:
        seed = credentials.refresh_token or ""
    digest = hashlib.sha256(seed.encode()).digest()
    return timedelta(seconds=int.from_bytes(digest[:4], "big") % int(SPREAD.total_seconds()))


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
    start = now or datetime.now(UTC)
    if isinstance(credentials, DelegatedCredentials):
        form = {"grant_type": JWT_BEARER, "assertion": credentials.assertion(start)}
        token_uri = credentials.token_uri
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
