"""`create_app`: the Flask app of `maillink serve`, around a maillink `App`.

Sessions are Flask's signed cookies (HttpOnly, SameSite=Lax, Secure when the public URL is https),
signed with a key kept encrypted in the store (`session_key`). Every form carries a CSRF token
(Flask-WTF's CSRFProtect). Pages send a strict Content-Security-Policy and are never cached.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.routing import IntegerConverter, Map
from werkzeug.wrappers import Response

from maillink.errors import ConfigError
from maillink.store.users import SESSION_LIFETIME
from maillink.web import auth, connect_google, connect_microsoft, team, views
from maillink.web.context import EXTENSION, WebContext
from maillink.web.jobs import SyncJobs
from maillink.web.session_key import session_key
from maillink.web.settings import WebSettings

if TYPE_CHECKING:
    from maillink.app import App

SESSION_HOURS = int(SESSION_LIFETIME.total_seconds() // 3600)
MAX_ID = 2**31 - 1  # the largest id an Integer column holds on PostgreSQL (and that SQLite reaches)


class IdConverter(IntegerConverter):
    """`<id:name>`: a row id, 0 to MAX_ID; any other number is no route (404), never a 500 from
    the database driver (an id of 2^63 overflows SQLite's, 2^31 PostgreSQL's)."""

    def __init__(self, url_map: Map) -> None:
        super().__init__(url_map, min=0, max=MAX_ID)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _consent_origins(app: App) -> list[str]:
    """Where the "Connect" forms may redirect the browser to (the providers' consent pages)."""
    try:
        google = app.credentials.google or {}
    except ConfigError:
        return []
    section = google.get("web") or google.get("installed") or {}
    origins = [_origin(section["auth_uri"])] if section.get("auth_uri") else []
    if app.credentials.microsoft is not None:  # Microsoft's sign-in and admin-consent pages
        origins.append(_origin(app.settings.microsoft.authority))
    return origins


def _when(value: Any) -> str:
    """A date as people read it: 2026-03-01 09:00 UTC."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def create_app(app: App, settings: WebSettings, *, testing: bool = False) -> Flask:
    """The web app; `app` is the maillink `App` (its store, cipher, CRM and providers)."""
    web = Flask(__name__)
    secure = settings.secure
    web.config.update(
        SECRET_KEY=session_key(app.store, app.cipher),
        SESSION_COOKIE_NAME="maillink_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600,
        TRUSTED_HOSTS=[settings.hostname],
        MAX_CONTENT_LENGTH=64 * 1024,
        TESTING=testing,
    )
    web.extensions[EXTENSION] = WebContext(app=app, settings=settings, jobs=SyncJobs(app))
    web.url_map.converters["id"] = IdConverter
    CSRFProtect(web)
    web.register_blueprint(auth.bp)
    web.register_blueprint(connect_google.bp)
    web.register_blueprint(connect_microsoft.bp)
    web.register_blueprint(views.bp)
    web.register_blueprint(team.bp)
    web.add_template_filter(_when, "when")
    form_action = " ".join(["'self'", *_consent_origins(app)])
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )

    @web.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = policy
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not response.headers.get("Cache-Control") and response.mimetype != "text/css":
            response.headers["Cache-Control"] = "no-store"
        return response

    @web.context_processor
    def user_in_templates() -> dict[str, Any]:
        return {"user": auth.current_user()}

    @web.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> tuple[str, int]:
        message = (
            "This form was refused: it did not carry a valid CSRF token "
            f"({error.description}). Reload the page and try again."
        )
        return render_template("error.html", title="Refused", message=message), 400

    @web.errorhandler(ConfigError)
    def config_error(error: ConfigError) -> tuple[str, int]:
        return render_template("error.html", title="Configuration", message=str(error)), 503

    @web.errorhandler(SecurityError)
    def untrusted_host(error: SecurityError) -> tuple[str, int, dict[str, str]]:
        # No page template here: URLs cannot be built for a host that is not ours.
        return (
            "maillink: this host name is not the one maillink serves\n",
            400,
            {"Content-Type": "text/plain; charset=utf-8"},
        )

    @web.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[str, int]:
        messages = {
            401: "Sign in first, with the link your admin gave you.",
            403: "This belongs to another user's mailbox.",
            404: "There is nothing here.",
        }
        code = error.code or 500
        message = messages.get(code, error.description or error.name)
        return render_template("error.html", title=error.name, message=message), code

    return web
