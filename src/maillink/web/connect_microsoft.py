"""Connecting a Microsoft 365 / Outlook mailbox from the browser, and a tenant's admin consent.

- MSAL runs the authorization-code flow (`initiate_auth_code_flow` /
  `acquire_token_by_auth_code_flow`: state, PKCE S256, nonce) with the confidential client when
  credentials.json `microsoft` has a `client_secret`, else the public one; scopes `Mail.ReadBasic`
  and `User.Read`, as `maillink connect microsoft` asks; redirect URI
  `{public_url}/oauth/microsoft/callback`, from configuration only.
- MSAL's flow dict holds the PKCE verifier and the nonce: it is kept in the signed session
  encrypted with the store's encryption key (Fernet), never readable in the cookie, so any
  server process can finish the consent and nothing is left behind on the server. Its `state`
  is kept beside it, one-time and bound to this browser session like Google's.
- The token cache is stored exactly as `maillink connect microsoft` stores it
  (`App.store_microsoft_account`); the first sync starts in the background.
- A tenant whose policy blocks user consent answers with an error: the page says so, and an
  admin gets the tenant's admin-consent link (`{authority host}/{tenant}/adminconsent`), whose
  answer comes back to the same callback with its own one-time state.
"""

from __future__ import annotations

import json
import logging
import secrets
import warnings
from typing import Any
from urllib.parse import urlencode, urlsplit

import msal
import requests
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from maillink.errors import ConfigError
from maillink.onboarding.microsoft import (
    SCOPES,
    ConnectedMicrosoftAccount,
    MicrosoftConnectError,
    build_app,
    connected_account,
)
from maillink.secrets import WrongKeyError
from maillink.store import accounts, users
from maillink.store.accounts import Account
from maillink.web.auth import require_user, signed_in
from maillink.web.connect import (
    REDIRECT_NAMED,
    Refused,
    answered_state,
    begin_consent,
    check_mailbox_is_theirs,
    claim_consent,
    connected,
    microsoft_problem,
    names_a_redirect_uri,
    refuse,
)
from maillink.web.context import web_context
from maillink.web.settings import MICROSOFT_CALLBACK

bp = Blueprint("connect_microsoft", __name__)
log = logging.getLogger(__name__)

PENDING = "oauth_microsoft"  # the session key of the sign-in under way
ADMIN_PENDING = "oauth_microsoft_admin"  # the session key of the admin consent under way
# Entra ID's answers when the tenant's policy leaves the consent to an admin: AADSTS90093
# (user consent blocked by policy), AADSTS90094 (admin approval required), AADSTS65001 (no
# consent yet, and none can be asked of this user).
CONSENT_BLOCKED = ("AADSTS90093", "AADSTS90094", "AADSTS65001")
# The answer comes back in the query, not as a form_post: a cross-site POST carries no
# SameSite=Lax session cookie, so the state could not be bound to the session. The code in the
# URL is worthless without the PKCE verifier (kept encrypted) and redeemed at once; the callback
# redirects straight away and pages send Referrer-Policy same-origin.
warnings.filterwarnings(
    "ignore", message="response_mode='form_post' is recommended", module=r"msal\."
)
TENANT_ALIASES = ("common", "consumers")  # not tenants: admin consent needs a tenant


def _client() -> tuple[str, str | None]:
    client = web_context().app.credentials.microsoft
    if client is None:
        raise ConfigError(microsoft_problem() or "Microsoft 365 is not configured")
    return client.client_id, client.client_secret


def _msal_app(cache: msal.SerializableTokenCache | None = None) -> msal.ClientApplication:
    client_id, secret = _client()
    authority = web_context().app.settings.microsoft.authority
    return build_app(client_id, authority=authority, client_secret=secret, token_cache=cache)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].split(" Trace ID:")[0] if lines else "no detail"


@bp.post("/connect/microsoft")
@signed_in
def connect_microsoft() -> Response | tuple[str, int]:
    if names_a_redirect_uri():
        return refuse(REDIRECT_NAMED)
    problem = microsoft_problem()
    if problem is not None:
        flash(problem, "error")
        return redirect(url_for("views.mailboxes"), code=303)
    user = require_user()
    hint = request.form.get("login_hint", "").strip() or (None if user.is_admin else user.email)
    context = web_context()
    try:
        flow = _msal_app().initiate_auth_code_flow(
            list(SCOPES),
            redirect_uri=context.settings.microsoft_redirect_uri,
            login_hint=hint,
            prompt="select_account",
        )
    except ConfigError as error:
        return refuse(f"Microsoft 365 is not configured: {error}", 503)
    except (ValueError, requests.RequestException) as error:
        authority = context.app.settings.microsoft.authority
        return refuse(f"Could not reach the Microsoft sign-in at {authority}: {error}", 502)
    kept = {k: v for k, v in flow.items() if k != "auth_uri"}  # the verifier and nonce: secret
    begin_consent(PENDING, str(flow["state"]), flow=context.app.cipher.encrypt(json.dumps(kept)))
    return redirect(str(flow["auth_uri"]), code=303)


@bp.get(MICROSOFT_CALLBACK)
@signed_in
def microsoft_callback() -> Response | tuple[str, int]:
    """The answer to a sign-in, or (its own state) to an admin consent."""
    user = require_user()
    if answered_state(ADMIN_PENDING):
        return _admin_consent_answer()
    try:
        pending = claim_consent(PENDING, "Microsoft")
        if request.args.get("error"):
            return _consent_error()
        found = _redeem(pending)
        # Nothing to revoke for a refused address: the tokens were in this request only, and
        # Microsoft has no per-token revocation (only every session of that user).
        check_mailbox_is_theirs(user, found.email, "Microsoft")
    except Refused as refused:
        return refuse(refused.message, refused.status)
    account, reconnected = _store(found, user.id)
    return connected(account, reconnected, user)


def _redeem(pending: dict[str, Any]) -> ConnectedMicrosoftAccount:
    """MSAL redeems the code (with the verifier, nonce and redirect URI of the flow it began)."""
    context = web_context()
    try:
        flow = json.loads(context.app.cipher.decrypt(str(pending.get("flow", ""))))
    except (WrongKeyError, ValueError):
        raise Refused(
            "This connection was started under another encryption key: start again."
        ) from None
    if not request.args.get("code"):
        raise Refused("Microsoft's answer carries no authorization code: start again.")
    cache = msal.SerializableTokenCache()
    try:
        app = _msal_app(cache)
        result = app.acquire_token_by_auth_code_flow(
            flow, request.args.to_dict(), scopes=list(SCOPES)
        )
        return connected_account(
            app, cache, result, SCOPES, graph_url=context.app.settings.microsoft.graph_url
        )
    except ConfigError as error:
        raise Refused(f"Microsoft 365 is not configured: {error}", 503) from None
    except MicrosoftConnectError as error:
        raise Refused(f"Not connected: {error}.", 502) from None
    except (ValueError, requests.RequestException) as error:
        raise Refused(f"Microsoft's sign-in could not be completed: {error}", 502) from None


def _store(found: ConnectedMicrosoftAccount, owner_id: int) -> tuple[Account, bool]:
    """Stored as `maillink connect microsoft` stores it; the first to connect it owns it."""
    app = web_context().app
    with app.store.transaction() as conn:
        reconnected = accounts.get(conn, found.email) is not None
        account = app.store_microsoft_account(conn, found)
        if users.owner_of(conn, account.id) is None:
            users.set_owner(conn, account.id, owner_id)
    log.info("connected %s (microsoft) from the web", account.email)
    return account, reconnected


def _consent_error() -> tuple[str, int]:
    """Microsoft answered the sign-in with an error: a tenant that leaves the consent to an
    admin gets its own page (with the admin-consent link for admins); any other error is shown."""
    error = request.args.get("error", "")
    detail = _first_line(request.args.get("error_description", ""))
    if error == "consent_required" or any(code in detail for code in CONSENT_BLOCKED):
        page = render_template(
            "consent_required.html", detail=f"{error}: {detail}", tenant=_tenant()
        )
        return page, 403
    raise Refused(
        f"Microsoft did not grant access ({error}: {detail}): nothing was connected.", 403
    )


# -- admin consent ------------------------------------------------------------------------------


def _tenant() -> str:
    """The tenant of the configured authority (`organizations` for common/consumers)."""
    path = urlsplit(web_context().app.settings.microsoft.authority).path.strip("/")
    tenant = path.rsplit("/", 1)[-1] if path else ""
    return "organizations" if not tenant or tenant.lower() in TENANT_ALIASES else tenant


def admin_consent_url(state: str) -> str:
    """`{authority host}/{tenant}/adminconsent?client_id=…&redirect_uri=…&state=…`."""
    context = web_context()
    parts = urlsplit(context.app.settings.microsoft.authority)
    path = parts.path.strip("/")
    prefix = path.rsplit("/", 1)[0] + "/" if "/" in path else ""  # an authority under a path
    client_id, _secret = _client()
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": context.settings.microsoft_redirect_uri,
            "state": state,
        }
    )
    return f"{parts.scheme}://{parts.netloc}/{prefix}{_tenant()}/adminconsent?{query}"


@bp.post("/connect/microsoft/adminconsent")
@signed_in
def microsoft_admin_consent() -> Response | tuple[str, int]:
    """An admin grants maillink's permissions for every user of the tenant (Microsoft asks a
    tenant administrator to sign in); the answer comes back to the Microsoft callback."""
    if not require_user().is_admin:
        abort(403)
    if names_a_redirect_uri():
        return refuse(REDIRECT_NAMED)
    problem = microsoft_problem()
    if problem is not None:
        return refuse(problem, 503)
    state = secrets.token_urlsafe(32)
    begin_consent(ADMIN_PENDING, state)
    return redirect(admin_consent_url(state), code=303)


def _admin_consent_answer() -> Response | tuple[str, int]:
    try:
        claim_consent(ADMIN_PENDING, "Microsoft")
    except Refused as refused:
        return refuse(refused.message, refused.status)
    if not require_user().is_admin:
        abort(403)
    if request.args.get("error"):
        error = request.args["error"]
        detail = _first_line(request.args.get("error_description", ""))
        return refuse(f"Admin consent was not granted ({error}: {detail}).", 403)
    if request.args.get("admin_consent", "").lower() != "true":
        return refuse("Microsoft's answer does not say that admin consent was granted.")
    tenant = request.args.get("tenant", "") or _tenant()
    log.info("admin consent granted for tenant %s", tenant)
    flash(
        f"Admin consent granted for tenant {tenant}: its users can now connect their "
        "mailboxes with Connect Microsoft."
    )
    return redirect(url_for("views.mailboxes"), code=303)
