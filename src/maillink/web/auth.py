"""Signing in with the per-user link `maillink users add|link` prints, and who the request is from.

A link signs in once, before it expires. The session cookie (signed, HttpOnly, SameSite=Lax) holds
a random session id whose hash the store keeps (`web_sessions`): every request looks it up, so
signing out, a new link, `maillink users remove` and `maillink keys rotate` end sessions on the
server, and a saved copy of the cookie signs nobody in afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar, cast

from flask import (
    Blueprint,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from maillink.store import users
from maillink.store.users import WebUser
from maillink.web.context import web_context

bp = Blueprint("auth", __name__)
F = TypeVar("F", bound=Callable[..., Any])


def _mark(user: WebUser) -> str:
    key = str(current_app.secret_key).encode("utf-8")
    return hmac.new(key, user.token_hash.encode("ascii"), hashlib.sha256).hexdigest()[:32]


def current_user() -> WebUser | None:
    user: WebUser | None = g.get("user")
    return user


def require_user() -> WebUser:
    user = current_user()
    if user is None:
        abort(401)
    return user


def signed_in(view: F) -> F:
    """Pages for signed-in users only: others are sent to the sign-in page."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            if request.method == "GET":
                return redirect(url_for("auth.signin", next=request.path), code=303)
            abort(401)
        return view(*args, **kwargs)

    return cast(F, wrapper)


@bp.before_app_request
def load_user() -> None:
    g.user = None
    session_id = session.get("sid")
    if not isinstance(session_id, str):
        if "uid" in session:  # a cookie from before server-side sessions
            session.clear()
        return
    with web_context().app.store.engine.connect() as conn:
        user = users.session_user(conn, session_id)
    if user is None:
        session.clear()
        return
    g.user = user


def _local_path(target: str | None) -> str:
    """`target` if it is a path of this site, else the mailboxes page (no open redirects)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and all(ch.isprintable() for ch in target)
    ):
        return target
    return url_for("views.mailboxes")


INVALID_LINK = (
    "This sign-in link is not valid (a newer one may have replaced it): "
    "ask your admin for a new one (maillink users link EMAIL)."
)
USED_LINK = (
    "This sign-in link was already used: a link signs in once. "
    "Ask your admin for a new one (maillink users link EMAIL)."
)
EXPIRED_LINK = (
    "This sign-in link has expired. Ask your admin for a new one (maillink users link EMAIL)."
)
REFUSED = {users.LinkState.USED: USED_LINK, users.LinkState.EXPIRED: EXPIRED_LINK}
CONFIRM_SECONDS = 300


def _refused(message: str) -> tuple[str, int]:
    return render_template("signin.html", error=message), 403


def _start_session(user: WebUser, target: str | None) -> Any:
    """Spend the user's link and open a session, or refuse when the link is no longer valid."""
    now = datetime.now(UTC)
    with web_context().app.store.transaction() as conn:
        if not users.use_link(conn, user, now):
            latest = users.get(conn, user.id)
            state = users.link_state(latest, now) if latest else users.LinkState.EXPIRED
            return _refused(REFUSED.get(state, INVALID_LINK))  # spent meanwhile, or replaced
        session_id = users.start_session(conn, user.id, now=now)
    session.clear()
    session.permanent = True
    session["sid"] = session_id
    return redirect(_local_path(target), code=303)


def _sign_in(token: str, target: str | None, *, cross_site: bool = False) -> Any:
    with web_context().app.store.engine.connect() as conn:
        user = users.by_token(conn, token.strip())
    if user is None:
        return _refused(INVALID_LINK)
    state = users.link_state(user, datetime.now(UTC))
    if state is not users.LinkState.VALID:
        return _refused(REFUSED[state])
    if cross_site:
        # A link followed from another site may be someone else's link (login CSRF): ask first.
        # The link is spent only once confirmed.
        session["confirm"] = {"uid": user.id, "mark": _mark(user), "at": int(time.time())}
        return render_template("confirm.html", email=user.email, next=target or "")
    return _start_session(user, target)


@bp.get("/signin")
def signin() -> Any:
    token = request.args.get("token")
    if token:
        cross_site = request.headers.get("Sec-Fetch-Site", "none") not in ("none", "same-origin")
        return _sign_in(token, request.args.get("next"), cross_site=cross_site)
    return render_template("signin.html", next=request.args.get("next", ""))


@bp.post("/signin")
def signin_form() -> Any:
    return _sign_in(request.form.get("token", ""), request.form.get("next"))


@bp.post("/signin/confirm")
def signin_confirm() -> Any:
    pending = session.pop("confirm", None)
    user = None
    if isinstance(pending, dict) and time.time() - int(pending.get("at", 0)) < CONFIRM_SECONDS:
        with web_context().app.store.engine.connect() as conn:
            user = users.get(conn, int(pending.get("uid", 0)))
    if user is None or not hmac.compare_digest(str(pending and pending.get("mark")), _mark(user)):
        return _refused(INVALID_LINK)
    return _start_session(user, request.form.get("next"))


@bp.post("/signout")
def signout() -> Response:
    """End the session here and in the store: a saved copy of the cookie no longer signs in."""
    session_id = session.get("sid")
    if isinstance(session_id, str):
        with web_context().app.store.transaction() as conn:
            users.end_session(conn, session_id)
    session.clear()
    return redirect(url_for("auth.signin"), code=303)
