"""Connecting a mailbox from the browser: what Google's and Microsoft's flows share.

Both run the authorization-code flow with PKCE (S256) and a one-time `state` kept in the signed
session, which binds the consent to this browser session and expires after ten minutes; both take
their redirect URI from configuration only (`{public_url}/oauth/{google|microsoft}/callback`).
The routes are in `connect_google` and `connect_microsoft`.

Whose mailbox: a rep (a web user who is not an admin) connects only the mailbox whose address is
their own web user's email; the callback refuses any other address and stores nothing. An admin
connects any mailbox. The first to connect a mailbox owns it; a reconnection keeps the owner.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from flask import flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from maillink.errors import ConfigError
from maillink.store import users
from maillink.store.accounts import Account
from maillink.store.users import WebUser
from maillink.web.context import web_context

log = logging.getLogger(__name__)

STATE_SECONDS = 600  # a consent not completed within ten minutes is refused
REDIRECT_NAMED = (
    "maillink takes its redirect URI from its configuration only: this request named another "
    "one and was refused."
)


class Refused(Exception):
    """The consent cannot go on; the message is shown to the user, nothing was stored."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def refuse(message: str, status: int = 400) -> tuple[str, int]:
    return render_template("error.html", title="Not connected", message=message), status


def names_a_redirect_uri() -> bool:
    """Whether the request tries to choose the redirect URI (only configuration does)."""
    return "redirect_uri" in request.values


def begin_consent(key: str, state: str, **kept: Any) -> None:
    """Remember the consent under way in the session, under `key` (one per provider)."""
    session[key] = {"state": state, "at": int(time.time()), **kept}


def answered_state(key: str) -> bool:
    """Whether this answer's `state` is the one of the consent under `key` (not consumed)."""
    pending = session.get(key)
    state = request.args.get("state", "")
    return (
        isinstance(pending, dict)
        and bool(state)
        and hmac.compare_digest(str(pending.get("state", "")), state)
    )


def claim_consent(key: str, provider: str) -> dict[str, Any]:
    """The consent under way under `key`, taken out of the session (one time only, whatever
    happens next) if this answer belongs to it and came within ten minutes; else Refused."""
    matches = answered_state(key)
    pending = session.pop(key, None)
    if not matches or not isinstance(pending, dict):
        raise Refused(
            f"This answer from {provider} does not belong to a connection started in this "
            "browser (a forged, replayed or stale request): it was refused. Start again from "
            "Mailboxes."
        )
    if time.time() - int(pending.get("at", 0)) > STATE_SECONDS:
        raise Refused("The connection took more than ten minutes: start again from Mailboxes.")
    return pending


def check_mailbox_is_theirs(user: WebUser, email: str, provider: str) -> None:
    """A rep connects only their own mailbox (its address is their web user's email); an admin
    connects any. Refused otherwise: the caller then stores nothing."""
    if user.is_admin or email.strip().lower() == user.email.strip().lower():
        return
    log.warning("refused: %s tried to connect %s (%s), not theirs", user.email, email, provider)
    raise Refused(
        f"You signed in to {provider} as {email}, but you use maillink as {user.email}: you can "
        "connect only your own mailbox. Nothing was stored. Connect again and choose your own "
        f"account at {provider}, or ask an admin to connect {email}.",
        403,
    )


def connected(account: Account, reconnected: bool, user: WebUser) -> Response:
    """After storing: the mailbox's sync starts in the background; its page shows the progress."""
    context = web_context()
    context.jobs.start(account)
    flash(
        f"{account.email} is {'reconnected' if reconnected else 'connected'}; "
        f"its {'sync' if reconnected else 'first sync'} has started."
    )
    with context.app.store.engine.connect() as conn:
        visible = users.can_see_account(conn, user, account.id)
    if not visible:
        return redirect(url_for("views.mailboxes"), code=303)
    return redirect(url_for("views.mailbox", account_id=account.id), code=303)


def is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost")


def microsoft_problem() -> str | None:
    """Why "Connect Microsoft" cannot work here, or None when it is configured."""
    try:
        configured = web_context().app.credentials.microsoft is not None
    except ConfigError as error:
        return f"Microsoft 365 is not configured: {error}"
    if not configured:
        return (
            "Microsoft 365 is not configured: add a microsoft section (client_id, and the "
            "client_secret of a Web app registration) to credentials.json."
        )
    return None
