"""The state of the Microsoft identity sandbox: users, grants, codes, device codes, tokens, and
Entra ID's error shape. Tokens are opaque random strings; refresh tokens rotate."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Response

SCOPE_READ_BASIC = "Mail.ReadBasic"
SCOPE_USER_READ = "User.Read"
RESOURCE_SCOPES = frozenset({"Mail.ReadBasic", "Mail.Read", "User.Read"})
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

AADSTS_MESSAGES = {
    50011: "The redirect URI specified in the request does not match the redirect URIs "
    "configured for the application.",
    50173: "The provided grant has expired due to it being revoked, a fresh auth token is "
    "needed. The user might have changed or reset their password.",
    54005: "OAuth2 Authorization code was already redeemed, please retry with a new valid code "
    "or use an existing refresh token.",
    65001: "The user or administrator has not consented to use the application.",
    65004: "User declined to consent to access the app.",
    90093: "An administrator of the tenant has set a policy that prevents you from granting "
    "the permissions this application requests. Contact an administrator, who can grant "
    "permissions to this application on your behalf.",
    90094: "The grant requires admin permission.",
    70000: "The provided value for the 'refresh_token' is not valid: it was replaced by a newer "
    "refresh token.",
    70003: "The app requested an unsupported grant type.",
    70008: "The provided authorization code or refresh token has expired due to inactivity.",
    70011: "The provided request must include a 'scope' input parameter with a valid scope.",
    70016: "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
    70019: "Verification code expired.",
    700016: "Application with identifier was not found in the directory.",
    7000112: "Application is disabled.",
    7000218: "The request body must contain the following parameter: 'client_assertion' or "
    "'client_secret'.",
    7000215: "Invalid client secret provided.",
    500011: "The resource principal named in the scope was not found in the tenant.",
    1002012: "The provided value for scope is not valid. Client credential flows must have a "
    "scope value with /.default suffixed to the resource identifier (application ID URI).",
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
            f"AADSTS{code}: {AADSTS_MESSAGES.get(code, error)} Trace ID: {trace} "
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


def b64url(raw: bytes) -> str:
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
    scopes: tuple[str, ...]  # delegated scopes; an app token's application permissions (roles)
    app: bool = False  # client credentials: no signed-in user, `/me` is refused


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
    # Application permissions an admin granted the app in this tenant (client credentials).
    app_permissions: set[str] = field(default_factory=set)
    app_disabled: bool = False  # the app disabled in the tenant (client credentials refused)
    # Delegated consent (consent.py): the app's web redirect URIs, the tenant's administrators,
    # a policy that blocks user consent, and the tenant-wide consent an administrator gave.
    redirect_uris: set[str] = field(default_factory=set)
    admins: set[str] = field(default_factory=set)
    user_consent_blocked: bool = False
    admin_consented: bool = False

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
            "sub": b64url(hashlib.sha256(user.user_id.encode()).digest()[:24]),
            "tid": self.tenant_id,
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        header = {"typ": "JWT", "alg": "RS256", "kid": "sandbox"}
        id_token = ".".join(
            [
                b64url(json.dumps(header).encode()),
                b64url(json.dumps(claims).encode()),
                b64url(secrets.token_bytes(64)),
            ]
        )
        client_info = b64url(json.dumps({"uid": user.user_id, "utid": self.tenant_id}).encode())
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
