"""HubSpot's OAuth for a public app: the install (authorize) page, the token endpoint at
`/oauth/v1/token` and `/oauth/v3/token` (form-encoded; the answer in the v3 spec's
`AccessTokenResponse` shape), and the check of bearer tokens on API calls.

As HubSpot does: access tokens live 30 minutes; a refresh answers a new access token and the
*same* refresh token (HubSpot's refresh tokens do not rotate, they last until the app is
uninstalled); older access tokens stay valid until they expire; codes are one-time and bound to
the redirect URI (and to the PKCE challenge when one was sent).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Response, jsonify, redirect, request
from werkzeug.wrappers import Response as WerkzeugResponse

from maillink.sandbox.hubspot.errors import ApiError, expired_token
from maillink.sandbox.hubspot.scopes import ALL_SCOPES

ACCESS_TOKEN_SECONDS = 1800
HUB_ID = 24_681_357


class OAuthError(ApiError):
    """A token endpoint refusal: HubSpot names the reason in `status` (BAD_AUTH_CODE…)."""

    def __init__(self, reason: str, message: str):
        super().__init__(400, message, reason)

    def body(self) -> dict[str, Any]:
        return {
            "status": self.category,
            "message": self.message,
            "correlationId": str(uuid.uuid4()),
            "category": self.category,
        }


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    scopes: list[str]
    challenge: str | None


@dataclass
class OAuthState:
    """The public app, the codes, and the tokens it has been given."""

    client_id: str
    client_secret: str
    user_id: int
    clock: Callable[[], datetime]
    scopes: frozenset[str] = ALL_SCOPES  # what the app may ask for
    codes: dict[str, _Code] = field(default_factory=dict)
    access: dict[str, tuple[datetime, frozenset[str]]] = field(default_factory=dict)
    refresh: dict[str, frozenset[str]] = field(default_factory=dict)  # token -> its scopes
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check_bearer(self, token: str) -> frozenset[str] | None:
        """The scopes of a valid access token; None for an unknown one; an expired one is
        refused with HubSpot's 401."""
        with self.lock:
            found = self.access.get(token)
        if found is None:
            return None
        if self.clock() >= found[0]:
            raise expired_token()
        return found[1]

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token, (_, scopes) in self.access.items():
                self.access[token] = (self.clock() - timedelta(seconds=1), scopes)

    def revoke(self, refresh_token: str) -> None:
        """The app is uninstalled (or the token deleted): the refresh token stops working."""
        with self.lock:
            self.refresh.pop(refresh_token, None)

    # -- HTTP --------------------------------------------------------------------------------

    def authorize(self) -> WerkzeugResponse:
        """GET /oauth/authorize: the user installs the app at once and is sent back."""
        args = request.args
        if args.get("client_id") != self.client_id:
            return Response("Authorization failed because the client_id is unknown", 400)
        redirect_uri = args.get("redirect_uri", "")
        if not redirect_uri:
            return Response("Authorization failed because redirect_uri is missing", 400)
        scopes = args.get("scope", "").split()
        missing = sorted(set(scopes) - self.scopes)
        if missing:
            return Response(f"The app asked for scopes it does not have: {missing}", 400)
        challenge = args.get("code_challenge")
        if challenge is not None and args.get("code_challenge_method", "S256") != "S256":
            return Response("code_challenge_method must be S256", 400)
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.codes[code] = _Code(self.client_id, redirect_uri, scopes, challenge)
        query = {"code": code, **({"state": args["state"]} if "state" in args else {})}
        separator = "&" if "?" in redirect_uri else "?"
        return redirect(f"{redirect_uri}{separator}{urlencode(query)}")

    def token(self) -> Response:
        """POST /oauth/v1/token and /oauth/v3/token."""
        form = request.form
        if form.get("client_id") != self.client_id:
            raise OAuthError("BAD_CLIENT_ID", "missing or invalid client_id")
        if form.get("client_secret") != self.client_secret:
            raise OAuthError("BAD_CLIENT_SECRET", "missing or invalid client_secret")
        grant = form.get("grant_type")
        if grant == "authorization_code":
            refresh_token = self._redeem(form.get("code", ""), form)
        elif grant == "refresh_token":
            refresh_token = form.get("refresh_token", "")
        else:
            raise OAuthError(
                "BAD_GRANT_TYPE", "grant_type must be authorization_code or refresh_token"
            )
        access_token = "hs-at-" + secrets.token_urlsafe(32)
        with self.lock:
            scopes = self.refresh.get(refresh_token)
            if scopes is None:
                raise OAuthError("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
            expires = self.clock() + timedelta(seconds=ACCESS_TOKEN_SECONDS)
            self.access[access_token] = (expires, scopes)
        return jsonify(
            {
                "access_token": access_token,
                "refresh_token": refresh_token,
                "expires_in": ACCESS_TOKEN_SECONDS,
                "token_type": "bearer",
                "token_use": "access_token",
                "hub_id": HUB_ID,
                "user_id": self.user_id,
                "scopes": sorted(scopes),
            }
        )

    def _redeem(self, code: str, form: Any) -> str:
        with self.lock:
            grant = self.codes.pop(code, None)
        if grant is None:
            raise OAuthError("BAD_AUTH_CODE", "missing or unknown auth code")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("BAD_REDIRECT_URI", "redirect_uri does not match the authorization")
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
                raise OAuthError("BAD_AUTH_CODE", "code_verifier does not match the challenge")
        refresh_token = "hs-rt-" + str(uuid.uuid4())
        with self.lock:
            self.refresh[refresh_token] = frozenset(grant.scopes)
        return refresh_token

    def routes(self) -> list[tuple[str, str, Callable[..., Any], str]]:
        return [
            ("/oauth/authorize", "oauth.authorize", self.authorize, "GET"),
            ("/oauth/v1/token", "oauth.token.v1", self.token, "POST"),
            ("/oauth/v3/token", "oauth.token", self.token, "POST"),
        ]
