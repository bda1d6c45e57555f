"""Google OAuth 2.0 of the sandbox: installed-app authorization with PKCE, token and revoke endpoints.

Answers as accounts.google.com and oauth2.googleapis.com do: error pages on the authorization
endpoint, `{"error", "error_description"}` JSON from the token endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlencode, urlsplit

from flask import Flask, Response, jsonify, redirect, request
from werkzeug.datastructures import Authorization
from werkzeug.wrappers import Response as WerkzeugResponse

from maillink.sandbox._server import Meter

SCOPE_METADATA = "https://www.googleapis.com/auth/gmail.metadata"
SUPPORTED_SCOPES = frozenset(
    {
        SCOPE_METADATA,
        "openid",
        "email",
        "profile",
        "https://www.googleapis.com/auth/userinfo.email",
        "https://www.googleapis.com/auth/userinfo.profile",
    }
)
ACCESS_TOKEN_SECONDS = 3599
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CODE_SECONDS = 600
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_PKCE_VALUE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


class OAuthError(Exception):
    """An OAuth error answer: HTTP `status` with `{"error": error, "error_description": ...}`."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Grant:
    """What a token stands for: a mailbox's consent to some scopes, for one client."""

    email: str
    scopes: tuple[str, ...]
    client_id: str


@dataclass(frozen=True)
class _PendingCode:
    grant: Grant
    redirect_uri: str
    challenge: str
    expires_at: float


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a code verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_scopes(scopes: tuple[str, ...]) -> None:
    unsupported = [scope for scope in scopes if scope not in SUPPORTED_SCOPES]
    if not scopes or unsupported:
        raise ValueError(f"unsupported scopes {unsupported or scopes!r}")


class OAuthState:
    """Clients, authorization codes, refresh and access tokens. Callers hold the sandbox lock."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.clients = {client_id: client_secret}
        self._codes: dict[str, _PendingCode] = {}
        self._refresh: dict[str, Grant] = {}
        self._access: dict[str, tuple[Grant, float]] = {}

    def authenticate_client(self, client_id: str | None, client_secret: str | None) -> None:
        if not client_id or client_id not in self.clients:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        expected = self.clients[client_id]
        if client_secret is None or not hmac.compare_digest(client_secret, expected):
            raise OAuthError(401, "invalid_client", "Unauthorized")

    def new_code(self, grant: Grant, redirect_uri: str, challenge: str) -> str:
        code = "4/0A" + secrets.token_urlsafe(32)
        self._codes[code] = _PendingCode(grant, redirect_uri, challenge, time.time() + CODE_SECONDS)
        return code

    def redeem_code(
        self, code: str, client_id: str, redirect_uri: str | None, verifier: str
    ) -> Grant:
        """The grant of a code, once: any later use of the same code is `invalid_grant`."""
        pending = self._codes.pop(code, None)
        if pending is None or pending.expires_at < time.time():
            raise OAuthError(400, "invalid_grant", "Bad Request")
        if pending.grant.client_id != client_id:
            raise OAuthError(400, "invalid_grant", "Bad Request")
        if redirect_uri != pending.redirect_uri:
            raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")
        if not verifier:
            raise OAuthError(400, "invalid_grant", "Missing code verifier.")
        if not hmac.compare_digest(s256(verifier), pending.challenge):
            raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
        return pending.grant

    def issue_refresh_token(self, grant: Grant) -> str:
        token = "1//0" + secrets.token_urlsafe(48)
        self._refresh[token] = grant
        return token

    def issue_access_token(self, grant: Grant) -> str:
        token = "ya29.a0" + secrets.token_urlsafe(48)
        self._access[token] = (grant, time.time() + ACCESS_TOKEN_SECONDS)
        return token

    def refresh(self, refresh_token: str, client_id: str, scope: str | None) -> Grant:
        grant = self._refresh.get(refresh_token)
        if grant is None or grant.client_id != client_id:
            raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
        if scope:
            wanted = tuple(scope.split())
            if not set(wanted) <= set(grant.scopes):
                raise OAuthError(400, "invalid_scope", "Bad Request")
            grant = Grant(grant.email, wanted, grant.client_id)
        return grant

    def grant_for(self, access_token: str) -> Grant | None:
        entry = self._access.get(access_token)
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]

    def revoke_token(self, token: str) -> bool:
        """Revoke a refresh token (and every token of its grant) or one access token."""
        grant = self._refresh.pop(token, None)
        if grant is not None:
            self.revoke_email(grant.email)
            return True
        return self._access.pop(token, None) is not None

    def revoke_email(self, email: str) -> None:
        self._refresh = {t: g for t, g in self._refresh.items() if g.email != email}
        self._access = {t: e for t, e in self._access.items() if e[0].email != email}
        self._codes = {c: p for c, p in self._codes.items() if p.grant.email != email}

    def expire_access_tokens(self, email: str) -> None:
        self._access = {
            t: (g, 0.0) if g.email == email else (g, x) for t, (g, x) in self._access.items()
        }


def _error_page(status: int, error: str, description: str) -> Response:
    body = (
        "<!doctype html><html><head><title>Error</title></head><body>"
        f"<h1>Access blocked: authorization error</h1><p>{html.escape(description)}</p>"
        f"<p>Error {status}: {html.escape(error)}</p></body></html>"
    )
    return Response(body, status=status, mimetype="text/html")


def is_loopback_redirect(uri: str) -> bool:
    """True for http://127.0.0.1[:port]/…, http://[::1]…, http://localhost… (installed apps)."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and not parts.fragment


def _with_query(uri: str, params: Mapping[str, str]) -> str:
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(params)


def register_oauth_routes(
    app: Flask,
    state: OAuthState,
    lock: threading.RLock,
    meter: Meter,
    consent_as: Callable[[], str | None],
    assertions: Callable[[Mapping[str, str]], Grant] | None = None,
) -> None:
    """Mount /o/oauth2/auth (and /o/oauth2/v2/auth), /token and /revoke on `app`.

    `assertions` answers the JWT bearer grant (a service account's signed assertion: the
    sandbox's Workspace, `maillink.sandbox.google.delegation`)."""
    OAuthRoutes(state, lock, meter, consent_as, assertions).register(app)


class OAuthRoutes:
    """The OAuth endpoints, one handler each; token state is read and written under `lock`."""

    def __init__(
        self,
        state: OAuthState,
        lock: threading.RLock,
        meter: Meter,
        consent_as: Callable[[], str | None],
        assertions: Callable[[Mapping[str, str]], Grant] | None = None,
    ) -> None:
        self.state = state
        self.lock = lock
        self.meter = meter
        self.consent_as = consent_as
        self.assertions = assertions

    def register(self, app: Flask) -> None:
        app.add_url_rule("/o/oauth2/auth", "oauth_authorize", self.authorize)
        app.add_url_rule("/o/oauth2/v2/auth", "oauth_authorize_v2", self.authorize)
        app.add_url_rule("/token", "token", self.token, methods=["POST"])
        app.add_url_rule("/revoke", "revoke", self.revoke, methods=["POST"])
        app.register_error_handler(OAuthError, _oauth_error)

    def authorize(self) -> WerkzeugResponse:
        """The consent screen: redirects back with a code, or with access_denied."""
        self.meter.count("oauth.authorize")
        ask = _authorization_request(request.args, self.state.clients)
        if isinstance(ask, Response):
            return ask
        email = self.consent_as()
        if email is None:
            return redirect(_with_query(ask.redirect_uri, {**ask.echo, "error": "access_denied"}))
        with self.lock:
            code = self.state.new_code(
                Grant(email, ask.scopes, ask.client_id), ask.redirect_uri, ask.challenge
            )
        answer = {**ask.echo, "code": code, "scope": " ".join(ask.scopes)}
        return redirect(_with_query(ask.redirect_uri, answer))

    def token(self) -> Response:
        """Redeem an authorization code or a refresh token for an access token."""
        self.meter.count("oauth.token")
        form = request.form
        client_id, client_secret = _client_credentials(form, request.authorization)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type == JWT_BEARER and self.assertions is not None:
            # A service account's assertion: signed by its key, no client secret.
            with self.lock:
                grant = self.assertions(form)
                access_token = self.state.issue_access_token(grant)
            return _token_response(access_token, grant, None)
        with self.lock:
            self.state.authenticate_client(client_id, client_secret)
            assert client_id is not None
            grant, refresh_token = self._exchange(grant_type, form, client_id)
            access_token = self.state.issue_access_token(grant)
        return _token_response(access_token, grant, refresh_token)

    def revoke(self) -> Response:
        self.meter.count("oauth.revoke")
        token_value = request.form.get("token") or request.args.get("token") or ""
        with self.lock:
            revoked = self.state.revoke_token(token_value)
        if not revoked:
            raise OAuthError(400, "invalid_token", "Token expired or revoked")
        return jsonify({})

    def _exchange(
        self, grant_type: str, form: Mapping[str, str], client_id: str
    ) -> tuple[Grant, str | None]:
        """The grant a token request stands for, and a new refresh token when it redeems a code."""
        if grant_type == "authorization_code":
            code = _required(form, "code")
            grant = self.state.redeem_code(
                code, client_id, form.get("redirect_uri"), form.get("code_verifier", "")
            )
            return grant, self.state.issue_refresh_token(grant)
        if grant_type == "refresh_token":
            refresh_token = _required(form, "refresh_token")
            return self.state.refresh(refresh_token, client_id, form.get("scope")), None
        raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")


@dataclass(frozen=True)
class _AuthorizationRequest:
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    challenge: str
    echo: dict[str, str]  # the client's `state`, sent back with the answer


def _authorization_request(
    args: Mapping[str, str], clients: Mapping[str, str]
) -> _AuthorizationRequest | Response:
    """The authorization request in `args`, or the error page Google shows instead of consent."""
    client_id = args.get("client_id", "")
    if client_id not in clients:
        return _error_page(401, "invalid_client", "The OAuth client was not found.")
    redirect_uri = args.get("redirect_uri", "")
    if not is_loopback_redirect(redirect_uri):
        return _error_page(
            400, "redirect_uri_mismatch", "redirect_uri must be a loopback http URI."
        )
    if args.get("response_type") != "code":
        return _error_page(400, "unsupported_response_type", "response_type must be code.")
    scopes = tuple(args.get("scope", "").split())
    try:
        check_scopes(scopes)
    except ValueError:
        return _error_page(400, "invalid_scope", f"Some requested scopes were invalid: {scopes}")
    challenge = args.get("code_challenge", "")
    if args.get("code_challenge_method") != "S256" or not _PKCE_VALUE.match(challenge):
        return _error_page(
            400, "invalid_request", "PKCE with code_challenge_method=S256 is required."
        )
    echo = {"state": args["state"]} if "state" in args else {}
    return _AuthorizationRequest(client_id, redirect_uri, scopes, challenge, echo)


def _client_credentials(
    form: Mapping[str, str], basic: Authorization | None
) -> tuple[str | None, str | None]:
    """The client id and secret, from HTTP Basic when sent (it wins), else from the form."""
    if basic is not None and basic.type == "basic":
        return unquote_plus(basic.username or ""), unquote_plus(basic.password or "")
    return form.get("client_id"), form.get("client_secret")


def _token_response(access_token: str, grant: Grant, refresh_token: str | None) -> Response:
    body: dict[str, object] = {
        "access_token": access_token,
        "expires_in": ACCESS_TOKEN_SECONDS,
        "scope": " ".join(grant.scopes),
        "token_type": "Bearer",
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate"
    response.headers["Pragma"] = "no-cache"
    return response


def _oauth_error(error: OAuthError) -> Response:
    response = jsonify({"error": error.error, "error_description": error.description})
    response.status_code = error.status
    return response


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise OAuthError(400, "invalid_request", f"Missing required parameter: {name}")
    return value
