"""Tenant consent in the Microsoft identity stand-in: the redirect URIs registered for the app,
a tenant policy that blocks user consent, and the admin-consent endpoint.

- Redirect URIs: a loopback `http://localhost:PORT` (any port, no path: the "mobile and desktop"
  platform MSAL's loopback flow uses) or one registered exactly (the "web" platform).
- With user consent blocked (`IdentityState.user_consent_blocked`), a user who is not a tenant
  administrator cannot consent: authorize redirects back with Entra ID's refusal
  (`error=access_denied`, AADSTS90093) as when the user leaves the "Need admin approval" page.
- `/{tenant}/adminconsent` (and `/{tenant}/v2.0/adminconsent`): a tenant administrator grants
  the app's permissions for every user; the answer redirects with
  `admin_consent=True&tenant={tenant id}&state=…`, or `error=…&error_description=AADSTS…`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, request

from maillink.sandbox._server import Meter
from maillink.sandbox.microsoft.grants import (
    AADSTS_MESSAGES,
    LOOPBACK_HOSTS,
    IdentityState,
    aad_error,
)


def redirect_uri_allowed(state: IdentityState, uri: str) -> bool:
    """A registered redirect URI (exactly), or a loopback one without a path (any port)."""
    if uri in state.redirect_uris:
        return True
    parts = urlsplit(uri)
    return (
        parts.scheme == "http"
        and parts.hostname in LOOPBACK_HOSTS
        and parts.path in ("", "/")
        and not parts.query
    )


def user_consent_refusal(state: IdentityState, email: str) -> tuple[str, int] | None:
    """Authorize's refusal of a user who may not consent (error, AADSTS code), or None."""
    with state.lock:
        blocked = state.user_consent_blocked and not state.admin_consented
        if blocked and email not in state.admins:
            return "access_denied", 90093
    return None


def register_admin_consent(
    app: Flask, state: IdentityState, meter: Meter, consenting: Callable[[], str | None]
) -> None:
    """The admin-consent endpoints of the login host."""

    def admin_consent(tenant: str) -> Any:
        meter.count("identity.adminconsent")
        args = request.args
        if tenant.lower() not in {state.tenant.lower(), state.tenant_id, "organizations"}:
            return aad_error("invalid_tenant", 90002)
        if args.get("client_id") != state.client_id:
            return aad_error("unauthorized_client", 700016)
        redirect_uri = args.get("redirect_uri", "")
        if not redirect_uri_allowed(state, redirect_uri):
            return aad_error("invalid_request", 50011)
        email = consenting()
        if email is None:
            return _answer(redirect_uri, args.get("state"), _error("access_denied", 65004))
        with state.lock:
            if email not in state.admins:
                return _answer(redirect_uri, args.get("state"), _error("access_denied", 90094))
            state.admin_consented = True
        return _answer(
            redirect_uri, args.get("state"), {"admin_consent": "True", "tenant": state.tenant_id}
        )

    app.add_url_rule("/<tenant>/adminconsent", "adminconsent", admin_consent)
    app.add_url_rule("/<tenant>/v2.0/adminconsent", "adminconsent_v2", admin_consent)


def _error(error: str, code: int) -> dict[str, str]:
    return {"error": error, "error_description": f"AADSTS{code}: {AADSTS_MESSAGES[code]}"}


def _answer(redirect_uri: str, state: str | None, params: dict[str, str]) -> Response:
    if state is not None:
        params["state"] = state
    sep = "&" if "?" in redirect_uri else "?"
    return Response(status=302, headers={"Location": f"{redirect_uri}{sep}{urlencode(params)}"})
