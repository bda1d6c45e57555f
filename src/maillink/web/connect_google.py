"""Connecting Gmail from the browser: Google's authorization-code flow with PKCE.

- The redirect URI is `{public_url}/oauth/google/callback`, from configuration only; a request
  that names another one is refused, and a "web" client must list it exactly.
- A one-time `state`, kept in the signed session, binds the consent to this browser session.
- The PKCE verifier (S256) is derived from the server's session key and the state, so it never
  leaves the server, not even in the cookie.
- A rep connects only their own address (`connect.check_mailbox_is_theirs`); the refresh token is
  encrypted and stored exactly as `maillink connect gmail` stores it; the mailbox's first sync
  starts in the background.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from flask import Blueprint, current_app, redirect, request
from google.oauth2.credentials import Credentials as GoogleCredentials
from werkzeug.wrappers import Response

from maillink.errors import ConfigError
from maillink.onboarding.google import (
    ConnectedGoogleAccount,
    GoogleConnectError,
    mailbox_address,
)
from maillink.providers.gmail_api import SCOPE_METADATA, check_endpoint
from maillink.store import accounts, users
from maillink.store.accounts import Account
from maillink.web.auth import require_user, signed_in
from maillink.web.connect import (
    REDIRECT_NAMED,
    Refused,
    begin_consent,
    check_mailbox_is_theirs,
    claim_consent,
    connected,
    is_loopback_http,
    names_a_redirect_uri,
    refuse,
)
from maillink.web.context import web_context
from maillink.web.settings import GOOGLE_CALLBACK

bp = Blueprint("connect", __name__)
log = logging.getLogger(__name__)

PENDING = "oauth_google"  # the session key of the consent under way
SCOPES = (SCOPE_METADATA,)


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
    elif not is_loopback_http(context.settings.public_url):
        raise ConfigError(
            f"{where}: google is a desktop (installed) client, which accepts loopback redirect "
            f"URIs only, but the public URL is {context.settings.public_url}: create a Web "
            f"application client with the redirect URI {redirect_uri}"
        )
    return kind, section


def _verifier(state: str) -> str:
    """The PKCE code verifier of this consent (43 characters, RFC 7636), known to the server only."""
    key = str(current_app.secret_key).encode("utf-8")
    digest = hmac.new(key, b"pkce:" + state.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@bp.post("/connect/google")
@signed_in
def connect_google() -> Response | tuple[str, int]:
    if names_a_redirect_uri():
        return refuse(REDIRECT_NAMED)
    try:
        _kind, client = google_client()
        auth_uri = check_endpoint(client["auth_uri"], "the Google auth_uri")
    except (ConfigError, ValueError, KeyError) as error:
        return refuse(f"Google is not configured: {error}", 503)
    state = secrets.token_urlsafe(32)
    begin_consent(PENDING, state)
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
    try:
        pending = claim_consent(PENDING, "Google")
        if request.args.get("error"):
            raise Refused(
                f"Google did not grant access ({request.args['error']}): nothing was connected.",
                403,
            )
        code = request.args.get("code", "")
        if not code:
            raise Refused("Google's answer carries no authorization code: start again.")
        try:
            found = _exchange(code, _verifier(str(pending["state"])))
        except GoogleConnectError as error:
            raise Refused(str(error), 502) from None
        except ConfigError as error:
            raise Refused(f"Google is not configured: {error}", 503) from None
        # Nothing is revoked for a refused address: revoking would end every token of that
        # Google account for maillink, the connected mailbox's own one included.
        check_mailbox_is_theirs(user, found.email, "Google")
    except Refused as refused:
        return refuse(refused.message, refused.status)
    account, reconnected = store_gmail_account(found, user.id)
    return connected(account, reconnected, user)


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
    email = mailbox_address(credentials, api_endpoint)
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
