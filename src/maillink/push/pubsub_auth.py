"""Who sent a Pub/Sub push: the OIDC token in its `Authorization: Bearer` header, checked as
Google documents for authenticated push subscriptions.

The token's signature and expiry are verified with google-auth (`id_token.verify_token`) against
the signing certificates at `certs_url` (Google's unless configured otherwise), kept for as long
as their `Cache-Control: max-age` says and fetched again once when a token names a key not among
them (Google rotates its keys). Then its claims: issuer accounts.google.com, audience the
configured one (else the URL the request reached), and `email` the push subscription's service
account with `email_verified`. A token that does not verify is 401, a verified one that is not
for us 403.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests
from google.auth import exceptions as auth_exceptions
from google.auth import transport
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import id_token

from maillink.config import GmailPushOidc

log = logging.getLogger("maillink.push")

ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
DEFAULT_MAX_AGE = 3600.0  # seconds the certificates are kept when the answer does not say
REFETCH_AFTER = (
    30.0  # a token naming an unknown key fetches the certificates again, at most this often
)
CLOCK_SKEW_SECONDS = 10
_MAX_AGE = re.compile(r"max-age=(\d+)")


class PushRefused(Exception):
    """The request's token is missing, does not verify (401) or is not for us (403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CertificatesUnavailable(Exception):
    """Google's signing certificates could not be fetched: the push is refused for now (503),
    and Pub/Sub sends it again."""


class _CertsRequest(transport.Request):
    """google-auth's requests transport, keeping GET answers (the certificates) for their
    max-age, so that a push costs no request to Google."""

    def __init__(self, session: requests.Session, clock: Callable[[], float]) -> None:
        self._inner = GoogleRequest(session)
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, float, Any]] = {}  # url: (fetched, until, response)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        now = self._clock()
        if method == "GET":
            with self._lock:
                kept = self._kept.get(url)
            if kept is not None and kept[1] > now:
                return kept[2]
        response = self._inner(
            url, method=method, body=body, headers=headers, timeout=timeout or 10, **kwargs
        )
        if method == "GET" and response.status == 200:
            match = _MAX_AGE.search(str(response.headers.get("cache-control", "")))
            max_age = float(match.group(1)) if match else DEFAULT_MAX_AGE
            with self._lock:
                self._kept[url] = (now, now + max_age, response)
        return response

    def forget_if_older(self, url: str, seconds: float) -> bool:
        """Drop the kept answer of `url` if it was fetched more than `seconds` ago; True if so."""
        with self._lock:
            kept = self._kept.get(url)
            if kept is None or self._clock() - kept[0] < seconds:
                return False
            del self._kept[url]
            return True


class PushVerifier:
    """Verifies the OIDC token of Pub/Sub push requests for one push subscription's account."""

    def __init__(
        self,
        oidc: GmailPushOidc,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.oidc = oidc
        self._request = _CertsRequest(session or requests.Session(), clock)

    def verify(self, token: str, request_urls: Sequence[str]) -> Mapping[str, Any]:
        """The token's claims if it is the push subscription's; `PushRefused` otherwise.
        `request_urls` are the audiences accepted when none is configured."""
        claims = self._verified(token)
        if claims.get("iss") not in ISSUERS:
            raise PushRefused(403, "the token's issuer is not Google")
        audiences = [self.oidc.audience] if self.oidc.audience else list(request_urls)
        if claims.get("aud") not in audiences:
            raise PushRefused(403, "the token's audience is not this endpoint")
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() != self.oidc.service_account:
            raise PushRefused(403, "the token is not the push subscription's service account")
        if claims.get("email_verified") is not True:
            raise PushRefused(403, "the token's email is not verified")
        return claims

    def _verified(self, token: str) -> Mapping[str, Any]:
        """Signature and expiry, checked against the certificates (fetched again once if the
        token's key is not among the kept ones and those are not brand new)."""
        for attempt in range(2):
            try:
                claims: Mapping[str, Any] = id_token.verify_token(
                    token,
                    self._request,
                    audience=None,  # checked by `verify`, so that a wrong one is a 403
                    certs_url=self.oidc.certs_url,
                    clock_skew_in_seconds=CLOCK_SKEW_SECONDS,
                )
                return claims
            except auth_exceptions.TransportError as exc:
                raise CertificatesUnavailable(str(exc)) from None
            except (ValueError, auth_exceptions.GoogleAuthError) as exc:
                unknown_key = "certificate" in str(exc).lower() or "key" in str(exc).lower()
                if (
                    attempt == 0
                    and unknown_key
                    and self._request.forget_if_older(self.oidc.certs_url, REFETCH_AFTER)
                ):
                    continue
                raise PushRefused(401, f"the token does not verify: {_short(exc)}") from None
            except requests.RequestException as exc:
                raise CertificatesUnavailable(type(exc).__name__) from None
        raise PushRefused(401, "the token does not verify")  # pragma: no cover - loop returns


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
