"""Microsoft identity platform (v2.0 endpoints) stand-in: OIDC discovery, authorize, token,
device code, as MSAL Python uses them, with errors in Entra ID's shape (``AADSTS…`` codes).

Authorization codes need PKCE S256 and are redeemed once; every refresh returns a new refresh
token and the old one keeps working only for `rotation_grace` seconds; device codes answer
``authorization_pending`` until the test approves them. Tokens are opaque random strings.
Redirect URIs, a tenant that blocks user consent, and admin consent: `consent`.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, request

from maillink.sandbox._server import Meter
from maillink.sandbox.microsoft.consent import (
    redirect_uri_allowed,
    register_admin_consent,
    user_consent_refusal,
)
from maillink.sandbox.microsoft.directory import client_credentials
from maillink.sandbox.microsoft.grants import (
    AADSTS_MESSAGES,
    DEVICE_GRANT,
    RESOURCE_SCOPES,
    CodeRecord,
    DeviceRecord,
    Grant,
    IdentityState,
    aad_error,
    b64url,
    resource_scopes,
)


def register_identity_routes(
    app: Flask,
    state: IdentityState,
    meter: Meter,
    consenting: Callable[[], str | None],
    base_url: Callable[[], str],
) -> None:
    """The login host's routes, under any of the tenant's names (name, id, common)."""
    IdentityRoutes(state, meter, consenting, base_url).register(app)


class IdentityRoutes:
    """The login host's endpoints, one handler each; grants are checked and issued in `state`."""

    def __init__(
        self,
        state: IdentityState,
        meter: Meter,
        consenting: Callable[[], str | None],
        base_url: Callable[[], str],
    ) -> None:
        self.state = state
        self.meter = meter
        self.consenting = consenting
        self.base_url = base_url

    def register(self, app: Flask) -> None:
        for rule, view, methods in (
            ("/<tenant>/v2.0/.well-known/openid-configuration", self.openid_configuration, ["GET"]),
            ("/common/discovery/instance", self.instance_discovery, ["GET"]),
            ("/<tenant>/oauth2/v2.0/authorize", self.authorize, ["GET"]),
            ("/<tenant>/oauth2/v2.0/devicecode", self.devicecode, ["POST"]),
            ("/devicelogin", self.devicelogin, ["GET", "POST"]),
            ("/<tenant>/oauth2/v2.0/token", self.token, ["POST"]),
        ):
            app.add_url_rule(rule, view.__name__, view, methods=methods)
        register_admin_consent(app, self.state, self.meter, self.consenting)

    def tenant_ok(self, tenant: str) -> bool:
        names = {self.state.tenant.lower(), self.state.tenant_id, "common", "organizations"}
        return tenant.lower() in names

    def openid_configuration(self, tenant: str) -> Any:
        self.meter.count("identity.discovery")
        if not self.tenant_ok(tenant):
            return aad_error("invalid_tenant", 90002, status=400)
        return _openid_configuration(self.base_url(), tenant, self.state.tenant_id)

    def instance_discovery(self) -> Any:
        # What MSAL asks when instance discovery is on; maillink turns it off for the sandbox.
        self.meter.count("identity.instance_discovery")
        base_url = self.base_url()
        host = urlsplit(base_url).netloc
        return {
            "tenant_discovery_endpoint": (
                f"{base_url}/{self.state.tenant}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }

    def authorize(self, tenant: str) -> Any:
        """The sign-in page: redirects back with a code for the consenting mailbox, or an error."""
        self.meter.count("identity.authorize")
        args = request.args
        if not self.tenant_ok(tenant) or args.get("client_id") != self.state.client_id:
            return aad_error("unauthorized_client", 700016)
        redirect_uri = args.get("redirect_uri", "")
        if not redirect_uri_allowed(self.state, redirect_uri):
            return aad_error("invalid_request", 50011)
        reply = _AuthorizeReply(redirect_uri, args.get("state"), args.get("response_mode"))
        refusal = _authorize_refusal(args)
        if refusal is not None:
            return reply.refuse(*refusal)
        email = self.consenting()
        if email is None:
            return reply.refuse("access_denied", 65004)
        blocked = user_consent_refusal(self.state, email)
        if blocked is not None:
            return reply.refuse(*blocked)
        code = "sbx-code-" + secrets.token_urlsafe(24)
        scopes = resource_scopes(args.get("scope", ""))
        record = CodeRecord(
            Grant(email, scopes),
            redirect_uri,
            args["code_challenge"],
            args.get("nonce"),
            time.time() + 600,
        )
        with self.state.lock:
            self.state.codes[code] = record
        return reply.send(code=code, session_state=str(uuid.uuid4()))

    def devicecode(self, tenant: str) -> Any:
        """Start a device-code sign-in: a user code to enter at /devicelogin."""
        self.meter.count("identity.devicecode")
        form = request.form
        if not self.tenant_ok(tenant) or form.get("client_id") != self.state.client_id:
            return aad_error("unauthorized_client", 700016)
        scopes = resource_scopes(form.get("scope", ""))
        if not scopes or any(s not in RESOURCE_SCOPES for s in scopes):
            return aad_error("invalid_scope", 70011)
        user_code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(9))
        device_code = "sbx-dc-" + secrets.token_urlsafe(32)
        with self.state.lock:
            self.state.devices[device_code] = DeviceRecord(user_code, scopes, time.time() + 900)
        return _device_code_body(
            user_code, device_code, f"{self.base_url()}/devicelogin", self.state.device_interval
        )

    def devicelogin(self) -> Any:
        # The page a user opens: a POST with the code approves it as the consenting mailbox.
        if request.method == "GET":
            return Response(
                "Enter the code displayed on your app or device.", mimetype="text/plain"
            )
        email = self.consenting()
        if email is None:
            return Response("consent declined", status=403, mimetype="text/plain")
        try:
            self.state.approve_device(request.form.get("otc", ""), email)
        except KeyError:
            return Response("unknown code", status=400, mimetype="text/plain")
        return Response("You have signed in. You may now close this window.", mimetype="text/plain")

    def token(self, tenant: str) -> Any:
        """Redeem a code, a refresh token or an approved device code for tokens."""
        self.meter.count("identity.token")
        form = request.form
        if not self.tenant_ok(tenant) or form.get("client_id") != self.state.client_id:
            return aad_error("unauthorized_client", 700016)
        refused = self._client_refusal(form)
        if refused is not None:
            return refused
        redeem = _GRANT_TYPES.get(form.get("grant_type") or "")
        if redeem is None:
            return aad_error("unsupported_grant_type", 70003)
        return redeem(self.state, form, self.base_url())

    def _client_refusal(self, form: Any) -> Response | None:
        """A confidential client's missing or wrong secret (form or HTTP Basic); None when fine."""
        if self.state.client_secret is None:
            return None
        secret = form.get("client_secret")
        if secret is None and request.authorization is not None:
            secret = request.authorization.password
        if secret is None:
            return aad_error("invalid_client", 7000218, status=401)
        if secret != self.state.client_secret:
            return aad_error("invalid_client", 7000215, status=401)
        return None


_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"


class _AuthorizeReply:
    """How the authorize endpoint answers: a redirect with the query, or a form_post page."""

    def __init__(self, redirect_uri: str, state: str | None, response_mode: str | None) -> None:
        self.redirect_uri = redirect_uri
        self.state = state
        self.form_post = response_mode == "form_post"

    def send(self, **params: str) -> Response:
        if self.state is not None:
            params["state"] = self.state
        if self.form_post:
            return _form_post(self.redirect_uri, params)
        sep = "&" if "?" in self.redirect_uri else "?"
        return Response(
            status=302, headers={"Location": f"{self.redirect_uri}{sep}{urlencode(params)}"}
        )

    def refuse(self, error: str, code: int) -> Response:
        return self.send(error=error, error_description=f"AADSTS{code}: {AADSTS_MESSAGES[code]}")


def _authorize_refusal(args: Any) -> tuple[str, int] | None:
    """What is wrong with an authorization request (error, AADSTS code), sent back to the app."""
    if args.get("response_type") != "code":
        return "unsupported_response_type", 9002313
    if not args.get("code_challenge") or args.get("code_challenge_method") != "S256":
        return "invalid_request", 9002325
    scopes = resource_scopes(args.get("scope", ""))
    if not scopes or any(s not in RESOURCE_SCOPES for s in scopes):
        return "invalid_scope", 70011
    return None


def _openid_configuration(base_url: str, tenant: str, tenant_id: str) -> dict[str, Any]:
    base = f"{base_url}/{tenant}"
    return {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{base_url}/{tenant}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base_url}/{tenant_id}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base_url}/oidc/userinfo",
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


def _device_code_body(
    user_code: str, device_code: str, verification: str, interval: int
) -> dict[str, Any]:
    return {
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": verification,
        "expires_in": 900,
        "interval": interval,
        "message": (
            f"To sign in, use a web browser to open the page {verification} and enter the "
            f"code {user_code} to authenticate."
        ),
    }


def _form_post(action: str, params: dict[str, str]) -> Response:
    """response_mode=form_post: a page whose form posts the answer to the redirect URI."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}" />'
        for k, v in params.items()
    )
    page = (
        "<html><head><title>Working...</title></head>"
        '<body onload="javascript:document.forms[0].submit()">'
        f'<form method="POST" name="hiddenform" action="{html.escape(action)}">{inputs}'
        "<noscript><p>Script is disabled. Click Submit to continue.</p>"
        '<input type="submit" value="Submit" /></noscript></form></body></html>'
    )
    return Response(page, mimetype="text/html")


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
        if b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest()) != record.challenge:
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


_GRANT_TYPES: dict[str, Callable[[IdentityState, Any, str], Any]] = {
    "authorization_code": _redeem_code,
    "refresh_token": _refresh,
    DEVICE_GRANT: _device,
    "client_credentials": client_credentials,
}
