"""Microsoft identity platform (v2.0 endpoints) stand-in: OIDC discovery, authorize, token,
device code, as MSAL Python uses them, with errors in Entra ID's shape (``AADSTS…`` codes).

Authorization codes need PKCE S256 and are redeemed once; every refresh returns a new refresh
token and the old one keeps working only for `rotation_grace` seconds; device codes answer
``authorization_pending`` until the test approves them. Tokens are opaque random strings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, request

from maillink.sandbox._server import Meter

SCOPE_READ_BASIC = "Mail.ReadBasic"
SCOPE_USER_READ = "User.Read"
RESOURCE_SCOPES = frozenset({"Mail.ReadBasic", "Mail.Read", "User.Read"})
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_MESSAGES = {
    50011: "The redirect URI specified in the request does not match the redirect URIs "
    "configured for the application.",
    50173: "The provided grant has expired due to it being revoked, a fresh auth token is "
    "needed. The user might have changed or reset their password.",
    54005: "OAuth2 Authorization code was already redeemed, please retry with a new valid code "
    "or use an existing refresh token.",
    65001: "The user or administrator has not consented to use the application.",
    65004: "User declined to consent to access the app.",
    70000: "The provided value for the 'refresh_token' is not valid: it was replaced by a newer "
    "refresh token.",
    70003: "The app requested an unsupported grant type.",
    70008: "The provided authorization code or refresh token has expired due to inactivity.",
    70011: "The provided request must include a 'scope' input parameter with a valid scope.",
    70016: "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
    70019: "Verification code expired.",
    700016: "Application with identifier was not found in the directory.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or "
    "'client_secret'.",
    7000215: "Invalid client secret provided.",
    9002313: "Invalid request. Request is malformed or invalid.",
    9002325: "Proof Key for Code Exchange is required for cross-origin authorization code "
    "redemption.",
    501481: "The Code_Verifier does not match the code_challenge supplied in the authorization "
    "request.",
}


def aad_error(error: str, code: int, status: int = 400, suberror: str | None = None) -> Response:
    """An Entra ID token-endpoint error body, as MSAL receives it."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {_MESSAGES.get(code, error)} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {now:%Y-%m-%d %H:%M:%SZ}"
        ),
        "error_codes": [code],
        "timestamp": f"{now:%Y-%m-%d %H:%M:%SZ}",
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    if suberror:
        body["suberror"] = suberror
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def resource_scopes(scope: str) -> tuple[str, ...]:
    """The Graph scopes named in `scope` (any resource prefix dropped), OIDC ones left out."""
    found: list[str] = []
    for word in scope.split():
        name = word.rsplit("/", 1)[-1] if word.startswith(("https://", "http://")) else word
        if name.lower() in OIDC_SCOPES or name == ".default":
            continue
        if name not in found:
            found.append(name)
    return tuple(found)


@dataclass
class User:
    email: str
    user_id: str
    display_name: str


@dataclass
class Grant:
    email: str
    scopes: tuple[str, ...]


@dataclass
class RefreshRecord:
    grant: Grant
    replaced_at: float | None = None
    revoked: bool = False


@dataclass
class AccessRecord:
    grant: Grant
    expires_at: float


@dataclass
class CodeRecord:
    grant: Grant
    redirect_uri: str
    challenge: str
    nonce: str | None
    expires_at: float
    used: bool = False


@dataclass
class DeviceRecord:
    user_code: str
    scopes: tuple[str, ...]
    expires_at: float
    approved: str | None = None
    declined: bool = False
    done: bool = False


@dataclass
class IdentityState:
    client_id: str
    client_secret: str | None
    tenant: str
    tenant_id: str
    access_token_lifetime: int = 3600
    rotation_grace: float = 30.0
    device_interval: int = 1
    users: dict[str, User] = field(default_factory=dict)
    refresh: dict[str, RefreshRecord] = field(default_factory=dict)
    access: dict[str, AccessRecord] = field(default_factory=dict)
    codes: dict[str, CodeRecord] = field(default_factory=dict)
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # --- tokens --------------------------------------------------------------------------

    def bearer(self, token: str) -> Grant | None:
        """The grant behind a live access token, or None (unknown, expired, revoked)."""
        with self.lock:
            record = self.access.get(token)
            if record is None or record.expires_at <= time.time():
                return None
            return record.grant

    def issue(self, grant: Grant, base_url: str, nonce: str | None = None) -> dict[str, Any]:
        """A token response: access, refresh and id token, client_info."""
        with self.lock:
            user = self.users[grant.email]
            access = "sbx-at-" + secrets.token_urlsafe(24)
            refresh = "sbx-rt-" + secrets.token_urlsafe(32)
            self.access[access] = AccessRecord(grant, time.time() + self.access_token_lifetime)
            self.refresh[refresh] = RefreshRecord(grant)
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": self.client_id,
            "iss": f"{base_url}/{self.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.display_name,
            "oid": user.user_id,
            "preferred_username": user.email,
            "sub": _b64url(hashlib.sha256(user.user_id.encode()).digest()[:24]),
            "tid": self.tenant_id,
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        header = {"typ": "JWT", "alg": "RS256", "kid": "sandbox"}
        id_token = ".".join(
            [
                _b64url(json.dumps(header).encode()),
                _b64url(json.dumps(claims).encode()),
                _b64url(secrets.token_bytes(64)),
            ]
        )
        client_info = _b64url(json.dumps({"uid": user.user_id, "utid": self.tenant_id}).encode())
        return {
            "token_type": "Bearer",
            "scope": " ".join((*grant.scopes, "openid", "profile", "email")),
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": access,
            "refresh_token": refresh,
            "id_token": id_token,
            "client_info": client_info,
        }

    def revoke(self, email: str) -> None:
        with self.lock:
            for record in self.refresh.values():
                if record.grant.email == email:
                    record.revoked = True
            for token in [t for t, r in self.access.items() if r.grant.email == email]:
                del self.access[token]

    def expire_access_tokens(self, email: str) -> None:
        with self.lock:
            for token in [t for t, r in self.access.items() if r.grant.email == email]:
                del self.access[token]

    def issue_refresh_token(self, email: str, scopes: tuple[str, ...]) -> str:
        with self.lock:
            refresh = "sbx-rt-" + secrets.token_urlsafe(32)
            self.refresh[refresh] = RefreshRecord(Grant(email, scopes))
            return refresh

    def approve_device(self, user_code: str | None, email: str) -> None:
        with self.lock:
            pending = [
                d
                for d in self.devices.values()
                if not d.done and (user_code is None or d.user_code == user_code)
            ]
            if not pending:
                raise KeyError(f"no pending device code {user_code or ''}".strip())
            for record in pending:
                record.approved = email


def register_identity_routes(
    app: Flask,
    state: IdentityState,
    meter: Meter,
    consenting: Callable[[], str | None],
    base_url: Callable[[], str],
) -> None:
    """The login host's routes, under any of the tenant's names (name, id, common)."""

    def tenant_ok(tenant: str) -> bool:
        return tenant.lower() in {
            state.tenant.lower(),
            state.tenant_id,
            "common",
            "organizations",
        }

    @app.get("/<tenant>/v2.0/.well-known/openid-configuration")
    def openid_configuration(tenant: str) -> Any:
        meter.count("identity.discovery")
        if not tenant_ok(tenant):
            return aad_error("invalid_tenant", 90002, status=400)
        base = f"{base_url()}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base_url()}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base_url()}/{state.tenant_id}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{base_url()}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name", "oid", "tid"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }

    @app.get("/common/discovery/instance")
    def instance_discovery() -> Any:
        # What MSAL asks when instance discovery is on; maillink turns it off for the sandbox.
        meter.count("identity.instance_discovery")
        host = urlsplit(base_url()).netloc
        return {
            "tenant_discovery_endpoint": (
                f"{base_url()}/{state.tenant}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }

    @app.get("/<tenant>/oauth2/v2.0/authorize")
    def authorize(tenant: str) -> Any:
        meter.count("identity.authorize")
        args = request.args
        if not tenant_ok(tenant) or args.get("client_id") != state.client_id:
            return aad_error("unauthorized_client", 700016)
        redirect_uri = args.get("redirect_uri", "")
        parts = urlsplit(redirect_uri)
        if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
            return aad_error("invalid_request", 50011)

        def back(**params: str) -> Response:
            if args.get("state") is not None:
                params["state"] = args["state"]
            sep = "&" if "?" in redirect_uri else "?"
            return Response(
                status=302, headers={"Location": f"{redirect_uri}{sep}{urlencode(params)}"}
            )

        def refuse(error: str, code: int) -> Response:
            return back(error=error, error_description=f"AADSTS{code}: {_MESSAGES[code]}")

        if args.get("response_type") != "code":
            return refuse("unsupported_response_type", 9002313)
        if not args.get("code_challenge") or args.get("code_challenge_method") != "S256":
            return refuse("invalid_request", 9002325)
        scopes = resource_scopes(args.get("scope", ""))
        if not scopes or any(s not in RESOURCE_SCOPES for s in scopes):
            return refuse("invalid_scope", 70011)
        email = consenting()
        if email is None:
            return refuse("access_denied", 65004)
        code = "sbx-code-" + secrets.token_urlsafe(24)
        with state.lock:
            state.codes[code] = CodeRecord(
                Grant(email, scopes),
                redirect_uri,
                args["code_challenge"],
                args.get("nonce"),
                time.time() + 600,
            )
        return back(code=code, session_state=str(uuid.uuid4()))

    @app.post("/<tenant>/oauth2/v2.0/devicecode")
    def devicecode(tenant: str) -> Any:
        meter.count("identity.devicecode")
        form = request.form
        if not tenant_ok(tenant) or form.get("client_id") != state.client_id:
            return aad_error("unauthorized_client", 700016)
        scopes = resource_scopes(form.get("scope", ""))
        if not scopes or any(s not in RESOURCE_SCOPES for s in scopes):
            return aad_error("invalid_scope", 70011)
        alphabet = "BCDFGHJKLMNPQRSTVWXZ23456789"
        user_code = "".join(secrets.choice(alphabet) for _ in range(9))
        device_code = "sbx-dc-" + secrets.token_urlsafe(32)
        with state.lock:
            state.devices[device_code] = DeviceRecord(user_code, scopes, time.time() + 900)
        verification = f"{base_url()}/devicelogin"
        return {
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": verification,
            "expires_in": 900,
            "interval": state.device_interval,
            "message": (
                f"To sign in, use a web browser to open the page {verification} and enter the "
                f"code {user_code} to authenticate."
            ),
        }

    @app.route("/devicelogin", methods=["GET", "POST"])
    def devicelogin() -> Any:
        # The page a user opens: a POST with the code approves it as the consenting mailbox.
        if request.method == "GET":
            return Response(
                "Enter the code displayed on your app or device.", mimetype="text/plain"
            )
        email = consenting()
        if email is None:
            return Response("consent declined", status=403, mimetype="text/plain")
        try:
            state.approve_device(request.form.get("otc", ""), email)
        except KeyError:
            return Response("unknown code", status=400, mimetype="text/plain")
        return Response("You have signed in. You may now close this window.", mimetype="text/plain")

    @app.post("/<tenant>/oauth2/v2.0/token")
    def token(tenant: str) -> Any:
        meter.count("identity.token")
        form = request.form
        if not tenant_ok(tenant) or form.get("client_id") != state.client_id:
            return aad_error("unauthorized_client", 700016)
        if state.client_secret is not None:
            secret = form.get("client_secret")
            if secret is None and request.authorization is not None:
                secret = request.authorization.password
            if secret is None:
                return aad_error("invalid_client", 7000218, status=401)
            if secret != state.client_secret:
                return aad_error("invalid_client", 7000215, status=401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return _redeem_code(state, form, base_url())
        if grant_type == "refresh_token":
            return _refresh(state, form, base_url())
        if grant_type == DEVICE_GRANT:
            return _device(state, form, base_url())
        return aad_error("unsupported_grant_type", 70003)


def _redeem_code(state: IdentityState, form: Any, base_url: str) -> Any:
    with state.lock:
        record = state.codes.get(form.get("code", ""))
        if record is None or record.expires_at < time.time():
            return aad_error("invalid_grant", 70008)
        if record.used:
            return aad_error("invalid_grant", 54005)
        if form.get("redirect_uri") != record.redirect_uri:
            return aad_error("invalid_grant", 50011)
        verifier = form.get("code_verifier", "")
        if (
            _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
            != record.challenge
        ):
            return aad_error("invalid_grant", 501481)
        record.used = True
    return state.issue(record.grant, base_url, nonce=record.nonce)


def _refresh(state: IdentityState, form: Any, base_url: str) -> Any:
    with state.lock:
        record = state.refresh.get(form.get("refresh_token", ""))
        if record is None:
            return aad_error("invalid_grant", 9002313)
        if record.revoked:
            return aad_error("invalid_grant", 50173, suberror="bad_token")
        now = time.time()
        if record.replaced_at is not None and now - record.replaced_at > state.rotation_grace:
            return aad_error("invalid_grant", 70000, suberror="bad_token")
        asked = resource_scopes(form.get("scope", "")) or record.grant.scopes
        if any(scope not in record.grant.scopes for scope in asked):
            return aad_error("invalid_grant", 65001, suberror="consent_required")
        if record.replaced_at is None:
            record.replaced_at = now  # rotation: the new refresh token replaces this one
        grant = Grant(record.grant.email, record.grant.scopes)
    return state.issue(grant, base_url)


def _device(state: IdentityState, form: Any, base_url: str) -> Any:
    with state.lock:
        record = state.devices.get(form.get("device_code", ""))
        if record is None:
            return aad_error("invalid_grant", 9002313)
        if record.expires_at < time.time():
            return aad_error("expired_token", 70019)
        if record.declined:
            return aad_error("authorization_declined", 65004)
        if record.done:
            return aad_error("invalid_grant", 54005)
        if record.approved is None:
            return aad_error("authorization_pending", 70016)
        record.done = True
        grant = Grant(record.approved, record.scopes)
    return state.issue(grant, base_url)
