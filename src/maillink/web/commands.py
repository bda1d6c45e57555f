"""`maillink serve` and `maillink users add|link|list|remove` (docs/cli.md).

Registered in `maillink.cli` with `cli.add_command(serve)` and `cli.add_command(users)`. This module
imports click only: the web stack is loaded when a command runs.
"""

from __future__ import annotations

import json
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import click

if TYPE_CHECKING:
    from maillink.app import App


class Obj(Protocol):
    """What these commands use of the CLI's shared object (`maillink.cli.Obj`)."""

    @property
    def app(self) -> App: ...


PUBLIC_URL_ENV = "MAILLINK_PUBLIC_URL"
PUBLIC_URL_HELP = (
    "The address browsers reach maillink at, e.g. https://maillink.example.com behind a TLS "
    "proxy (default: http://HOST:PORT; plain http for loopback hosts only). The redirect URIs to "
    "register are PUBLIC_URL/oauth/google/callback (Google) and PUBLIC_URL/oauth/microsoft/callback "
    f"(Microsoft). Also ${PUBLIC_URL_ENV}."
)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # waitress's loop ends on it, then running syncs are stopped


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option("--public-url", envvar=PUBLIC_URL_ENV, metavar="URL", help=PUBLIC_URL_HELP)
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64))
@click.pass_obj
def serve(obj: Obj, host: str, port: int, public_url: str | None, threads: int) -> None:
    """The web app: sign in, connect mailboxes, choose the deal of waiting threads."""
    from waitress import create_server

    from maillink.web.factory import create_app
    from maillink.web.settings import WebSettings

    app = obj.app
    app.cipher  # noqa: B018 - a missing or invalid encryption key is reported before serving
    server: Any = create_server(
        lambda environ, start_response: [],  # replaced below, once the port is known
        host=host,
        port=port,
        threads=threads,
        ident="maillink",
        clear_untrusted_proxy_headers=True,
    )
    try:
        bound = int(server.effective_port) if port == 0 else port
        settings = WebSettings.build(host, bound, public_url)
        web = create_app(app, settings)
        server.application = web
        click.echo(f"maillink: serving on {settings.public_url} (listening on {host}:{bound})")
        click.echo("maillink: sign-in links come from: maillink users add EMAIL", err=True)
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        web.extensions["maillink"].jobs.stop()
        click.echo("maillink: stopped")
    finally:
        server.close()
        app.close()


@click.group()
def users() -> None:
    """Web users: who may sign in to `maillink serve`."""


LINK_HOURS_HELP = (
    "How long the sign-in link is valid, in hours (1-720; default: [web] link_hours of "
    "maillink.toml, else 24). A link signs in once."
)
PUBLIC_URL_OPTION = click.option(
    "--public-url",
    envvar=PUBLIC_URL_ENV,
    metavar="URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The address of `maillink serve`, for the link.",
)
LINK_HOURS_OPTION = click.option(
    "--link-hours",
    type=click.IntRange(1, 720),
    metavar="N",
    default=None,
    help=LINK_HOURS_HELP,
)


def _print_link(obj: Obj, public_url: str, email: str, link_hours: int | None, **how: Any) -> None:
    """Issue the link (`how`: is_admin for `add`; nothing for `link`, an existing user) and print it."""
    from datetime import timedelta

    from maillink.errors import ConfigError
    from maillink.store import users as store_users
    from maillink.web.settings import WebSettings

    settings = WebSettings.build("127.0.0.1", 8080, public_url)
    hours = link_hours if link_hours is not None else obj.app.settings.web.link_hours
    lifetime = timedelta(hours=hours)
    try:
        address = store_users.normalize_email(email)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="EMAIL") from None
    with obj.app.store.transaction() as conn:
        existed = store_users.get_by_email(conn, address) is not None
        if "is_admin" in how:
            user, token = store_users.issue(conn, address, lifetime=lifetime, **how)
        else:
            issued = store_users.new_link(conn, address, lifetime=lifetime)
            if issued is None:
                raise ConfigError(f"no web user {address!r} (add one: maillink users add EMAIL)")
            user, token = issued
    role = "admin" if user.is_admin else "rep"
    what = (
        "new sign-in link (the previous one no longer works, nor do their sessions)"
        if existed
        else "sign-in link"
    )
    expires = user.link_expires_at.strftime("%Y-%m-%d %H:%M UTC") if user.link_expires_at else "?"
    click.echo(
        f"{what} for {user.email} ({role}); it signs in once, until {expires}, "
        "and is shown only this once:",
        err=True,
    )
    click.echo(settings.signin_link(token))


@users.command("add")
@click.argument("email")
@click.option("--admin", is_flag=True, help="Sees and acts on every mailbox.")
@PUBLIC_URL_OPTION
@LINK_HOURS_OPTION
@click.pass_obj
def add(obj: Obj, email: str, admin: bool, public_url: str, link_hours: int | None) -> None:
    """Add a web user (or give them a new link) and print their sign-in link, once."""
    _print_link(obj, public_url, email, link_hours, is_admin=admin)


@users.command("link")
@click.argument("email")
@PUBLIC_URL_OPTION
@LINK_HOURS_OPTION
@click.pass_obj
def link(obj: Obj, email: str, public_url: str, link_hours: int | None) -> None:
    """Print a new sign-in link for a web user, once (the old link and their sessions end)."""
    _print_link(obj, public_url, email, link_hours)


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_users(obj: Obj, as_json: bool) -> None:
    """The web users (never their links)."""
    from maillink.store import users as store_users

    with obj.app.store.engine.connect() as conn:
        rows = [
            {
                "email": u.email,
                "admin": u.is_admin,
                "created_at": u.created_at.isoformat(),
                "last_sign_in_at": u.last_sign_in_at.isoformat() if u.last_sign_in_at else None,
            }
            for u in store_users.all_users(conn)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no web user yet: maillink users add EMAIL [--admin]")
    for r in rows:
        role = "admin" if r["admin"] else "rep"
        click.echo(f"{r['email']:<36} {role:<6} last sign-in {r['last_sign_in_at'] or 'never'}")


@users.command("remove")
@click.argument("email")
@click.pass_obj
def remove(obj: Obj, email: str) -> None:
    """Remove a web user: their link and sessions end at once; their mailboxes stay."""
    from maillink.errors import ConfigError
    from maillink.store import users as store_users

    with obj.app.store.transaction() as conn:
        removed = store_users.remove(conn, email)
    if not removed:
        raise ConfigError(f"no web user {email!r} (see: maillink users list)")
    click.echo(f"removed {email}")


def end_web_sessions(app: App) -> None:
    """End every web session (`maillink keys rotate`): everyone signs in again with a new link."""
    from maillink.store import users as store_users

    with app.store.transaction() as conn:
        ended = store_users.end_all_sessions(conn)
    click.echo(f"ended {ended} web session(s): web users sign in again (maillink users link EMAIL)")
