"""Signing in with the per-user link `maillink users add` prints, and who the request is from.

The session (a signed, HttpOnly, SameSite=Lax cookie) holds the user's id and a mark derived from
their current token's hash: issuing a new link for a user, or removing them, ends their sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
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
    user_id = session.get("uid")
    if not isinstance(user_id, int):
        return
    with web_context().app.store.engine.connect() as conn:
        user = users.get(conn, user_id)
    if user is None or not hmac.compare_digest(str(session.get("mark", "")), _mark(user)):
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
    "ask your admin for a new one (maillink users add EMAIL)."
)
CONFIRM_SECONDS = 300


def _start_session(user: WebUser, target: str | None) -> Response:
    with web_context().app.store.transaction() as conn:
        users.signed_in(conn, user.id)
    session.clear()
    session.permanent = True
    session["uid"] = user.id
    session["mark"] = _mark(user)
    return redirect(_local_path(target), code=303)


def _sign_in(token: str, target: str | None, *, cross_site: bool = False) -> Any:
    with web_context().app.store.engine.connect() as conn:
        user = users.by_token(conn, token.strip())
    if user is None:
        return render_template("signin.html", error=INVALID_LINK), 403
    if cross_site:
        # A link followed from another site may be someone else's link (login CSRF): ask first.
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
        return render_template("signin.html", error=INVALID_LINK), 403
    return _start_session(user, request.form.get("next"))


@bp.post("/signout")
def signout() -> Response:
    session.clear()
    return redirect(url_for("auth.signin"), code=303)
