"""Connecting a mailbox from the browser: Google's authorization-code flow with PKCE.

- The redirect URI is `{public_url}/oauth/google/callback`, from configuration only; a request
  that names another one is refused, and a "web" client must list it exactly.
- A one-time `state`, kept in the signed session, binds the consent to this browser session.
- The PKCE verifier (S256) is derived from the server's session key and the state, so it never
  leaves the server, not even in the cookie.
- The refresh token is encrypted and stored exactly as `maillink connect gmail` stores it; the
  mailbox's first sync starts in the background.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from google.oauth2.credentials import Credentials as GoogleCredentials
from werkzeug.wrappers import Response

from maillink.errors import ConfigError
from maillink.onboarding.google import ConnectedGoogleAccount, GoogleConnectError
from maillink.providers.base import ProviderError
from maillink.providers.gmail_api import SCOPE_METADATA, GmailApi, check_endpoint
from maillink.providers.retry import RetryPolicy
from maillink.store import accounts, users
from maillink.store.accounts import Account
from maillink.web.auth import require_user, signed_in
from maillink.web.context import web_context
from maillink.web.settings import GOOGLE_CALLBACK

bp = Blueprint("connect", __name__)
log = logging.getLogger(__name__)

PENDING = "oauth_google"  # the session key of the consent under way
STATE_SECONDS = 600  # a consent not completed within ten minutes is refused
SCOPES = (SCOPE_METADATA,)


# -- configuration ---------------------------------------------------------------------------


def google_client() -> tuple[str, dict[str, Any]]:
    """The kind ("installed" or "web") and section of the configured Google client.

    Raises ConfigError when it is missing or cannot redirect to this app's callback.
    """
    context = web_context()
    google = context.app.credentials.google
    where = context.app.settings.credentials_path
    if not google:
        raise ConfigError(
            f"{where}: google is missing: put there the OAuth client file Google Cloud gives"
        )
    kind = "web" if "web" in google else "installed"
    section: dict[str, Any] = google[kind]
    redirect_uri = context.settings.google_redirect_uri
    if kind == "web":
        listed = section.get("redirect_uris") or []
        if redirect_uri not in listed:
            raise ConfigError(
                f"{where}: google.web.redirect_uris does not list {redirect_uri} (redirect URIs "
                "must match exactly): add it there and in Google Cloud, or change --public-url"
            )
    elif not _is_loopback_http(context.settings.public_url):
        raise ConfigError(
            f"{where}: google is a desktop (installed) client, which accepts loopback redirect "
            f"URIs only, but the public URL is {context.settings.public_url}: create a Web "
            f"application client with the redirect URI {redirect_uri}"
        )
    return kind, section


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost")


def microsoft_problem() -> str | None:
    """Why "Connect Microsoft" cannot work here, or None when it is configured."""
    try:
        module = importlib.import_module("maillink.onboarding.microsoft")
    except ImportError:
        module = None
    if module is None or not hasattr(module, "connect_microsoft"):
        return "Microsoft 365 is not configured: this version of maillink cannot connect it yet."
    try:
        configured = web_context().app.credentials.microsoft is not None
    except ConfigError as error:
        return f"Microsoft 365 is not configured: {error}"
    if not configured:
        return (
            "Microsoft 365 is not configured: add a microsoft section (client_id, tenant) to "
            "credentials.json."
        )
    return None


# -- the flow ---------------------------------------------------------------------------------


def _verifier(state: str) -> str:
    """The PKCE code verifier of this consent (43 characters, RFC 7636), known to the server only."""
    key = str(current_app.secret_key).encode("utf-8")
    digest = hmac.new(key, b"pkce:" + state.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _refuse(message: str, status: int = 400) -> tuple[str, int]:
    return render_template("error.html", title="Not connected", message=message), status


@bp.post("/connect/google")
@signed_in
def connect_google() -> Response | tuple[str, int]:
    if "redirect_uri" in request.values:
        return _refuse(
            "maillink takes its redirect URI from its configuration only: this request named "
            "another one and was refused."
        )
    try:
        _kind, client = google_client()
        auth_uri = check_endpoint(client["auth_uri"], "the Google auth_uri")
    except (ConfigError, ValueError, KeyError) as error:
        return _refuse(f"Google is not configured: {error}", 503)
    state = secrets.token_urlsafe(32)
    session[PENDING] = {"state": state, "at": int(time.time())}
    params = {
        "client_id": client["client_id"],
        "redirect_uri": web_context().settings.google_redirect_uri,
        "response_type": "code",
        "scope": " ".join(SCOPES),
        "state": state,
        "code_challenge": _challenge(_verifier(state)),
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent",
    }
    hint = request.form.get("login_hint", "").strip()
    if hint:
        params["login_hint"] = hint
    separator = "&" if urlsplit(auth_uri).query else "?"
    return redirect(auth_uri + separator + urlencode(params), code=303)


@bp.get(GOOGLE_CALLBACK)
@signed_in
def google_callback() -> Response | tuple[str, int]:
    user = require_user()
    pending = session.pop(PENDING, None)  # one time only, whatever happens next
    state = request.args.get("state", "")
    if (
        not isinstance(pending, dict)
        or not state
        or not hmac.compare_digest(str(pending.get("state", "")), state)
    ):
        return _refuse(
            "This answer from Google does not belong to a connection started in this browser "
            "(a forged, replayed or stale request): it was refused. Start again from Mailboxes."
        )
    if time.time() - int(pending.get("at", 0)) > STATE_SECONDS:
        return _refuse("The connection took more than ten minutes: start again from Mailboxes.")
    if request.args.get("error"):
        return _refuse(
            f"Google did not grant access ({request.args['error']}): nothing was connected.", 403
        )
    code = request.args.get("code", "")
    if not code:
        return _refuse("Google's answer carries no authorization code: start again.")
    try:
        connected = _exchange(code, _verifier(state))
    except GoogleConnectError as error:
        return _refuse(str(error), 502)
    except ConfigError as error:
        return _refuse(f"Google is not configured: {error}", 503)
    account, reconnected = store_gmail_account(connected, user.id)
    web_context().jobs.start(account)
    flash(
        f"{account.email} is {'reconnected' if reconnected else 'connected'}; "
        f"its {'sync' if reconnected else 'first sync'} has started."
    )
    with web_context().app.store.engine.connect() as conn:
        visible = users.can_see_account(conn, user, account.id)
    if not visible:
        return redirect(url_for("views.mailboxes"), code=303)
    return redirect(url_for("views.mailbox", account_id=account.id), code=303)


def _exchange(code: str, verifier: str) -> ConnectedGoogleAccount:
    """Redeem the code (with the verifier and the same redirect URI), then read the address."""
    context = web_context()
    _kind, client = google_client()
    try:
        token_uri = check_endpoint(client["token_uri"], "the Google token_uri")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    api_endpoint = context.app.settings.gmail.api_endpoint
    try:
        answer = requests.post(
            token_uri,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": context.settings.google_redirect_uri,
                "client_id": client["client_id"],
                "client_secret": client.get("client_secret") or "",
                "code_verifier": verifier,
            },
            headers={"Accept": "application/json"},
            timeout=30,
        )
    except requests.RequestException as error:
        raise GoogleConnectError(f"could not reach Google's token endpoint: {error}") from None
    body = _json(answer)
    if answer.status_code != 200 or "access_token" not in body:
        reason = body.get("error") or f"HTTP {answer.status_code}"
        detail = body.get("error_description") or "no detail"
        raise GoogleConnectError(f"Google refused the authorization code ({reason}: {detail})")
    refresh_token = body.get("refresh_token")
    if not refresh_token:
        raise GoogleConnectError(
            "Google returned no refresh token: remove maillink's access at "
            "https://myaccount.google.com/permissions and connect again"
        )
    scope = body.get("scope")
    granted = scope.split() if isinstance(scope, str) else list(SCOPES)
    missing = [s for s in SCOPES if s not in granted]
    if missing:
        raise GoogleConnectError(
            f"the consent did not grant {', '.join(missing)}: connect again and allow maillink "
            "to view your email message metadata"
        )
    credentials = GoogleCredentials(
        token=body["access_token"],
        refresh_token=refresh_token,
        token_uri=token_uri,
        client_id=client["client_id"],
        client_secret=client.get("client_secret"),
        scopes=granted,
    )
    try:
        profile = GmailApi(
            credentials,
            api_endpoint=api_endpoint,
            http_timeout=60.0,
            batch_size=1,
            policy=RetryPolicy(),
        ).profile()
    except ProviderError as error:
        raise GoogleConnectError(f"could not read the mailbox address: {error}") from error
    email = str(profile.get("emailAddress", "")).strip().lower()
    if not email:
        raise GoogleConnectError("Gmail's profile answer holds no emailAddress")
    return ConnectedGoogleAccount(email, refresh_token, tuple(granted))


def _json(answer: requests.Response) -> Mapping[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def store_gmail_account(connected: ConnectedGoogleAccount, owner_id: int) -> tuple[Account, bool]:
    """Store the mailbox as `App.connect_gmail` does; the first to connect it owns it."""
    app = web_context().app
    token = app.cipher.encrypt(
        json.dumps({"refresh_token": connected.refresh_token, "scopes": list(connected.scopes)})
    )
    with app.store.transaction() as conn:
        reconnected = accounts.get(conn, connected.email) is not None
        account = accounts.upsert(conn, connected.email, "gmail", token, " ".join(connected.scopes))
        if users.owner_of(conn, account.id) is None:
            users.set_owner(conn, account.id, owner_id)
    log.info("connected %s (gmail) from the web", account.email)
    return account, reconnected


@bp.post("/connect/microsoft")
@signed_in
def connect_microsoft() -> Response:
    problem = microsoft_problem()
    if problem is None:
        problem = (
            "Connecting Microsoft 365 from the browser is not available yet: run "
            "`maillink connect microsoft` on the server."
        )
    flash(problem, "error")
    return redirect(url_for("views.mailboxes"), code=303)
