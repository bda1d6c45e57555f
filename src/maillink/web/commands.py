"""`maillink serve` and `maillink users add|list|remove` (DESIGN.md §5).

Registered in `maillink.cli` with `cli.add_command(serve)` and `cli.add_command(users)`. This module
imports click only: the web stack is loaded when a command runs.
"""

from __future__ import annotations

import json
import signal
from types import FrameType
from typing import Any

import click

PUBLIC_URL_ENV = "MAILLINK_PUBLIC_URL"
PUBLIC_URL_HELP = (
    "The address browsers reach maillink at, e.g. https://maillink.example.com behind a TLS "
    "proxy (default: http://HOST:PORT; plain http for loopback hosts only). Google's redirect URI "
    f"is PUBLIC_URL/oauth/google/callback. Also ${PUBLIC_URL_ENV}."
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
def serve(obj: Any, host: str, port: int, public_url: str | None, threads: int) -> None:
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


@users.command("add")
@click.argument("email")
@click.option("--admin", is_flag=True, help="Sees and acts on every mailbox.")
@click.option(
    "--public-url",
    envvar=PUBLIC_URL_ENV,
    metavar="URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The address of `maillink serve`, for the link.",
)
@click.pass_obj
def add(obj: Any, email: str, admin: bool, public_url: str) -> None:
    """Add a web user (or replace their link) and print their sign-in link, once."""
    from maillink.store import users as store_users
    from maillink.web.settings import WebSettings

    settings = WebSettings.build("127.0.0.1", 8080, public_url)
    try:
        address = store_users.normalize_email(email)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="EMAIL") from None
    with obj.app.store.transaction() as conn:
        existed = store_users.get_by_email(conn, address) is not None
        user, token = store_users.issue(conn, address, is_admin=admin)
    role = "admin" if user.is_admin else "rep"
    what = "new sign-in link (the previous one no longer works)" if existed else "sign-in link"
    click.echo(f"{what} for {user.email} ({role}); it is shown only this once:", err=True)
    click.echo(settings.signin_link(token))


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_users(obj: Any, as_json: bool) -> None:
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
def remove(obj: Any, email: str) -> None:
    """Remove a web user: their link and sessions stop working; their mailboxes stay."""
    from maillink.errors import ConfigError
    from maillink.store import users as store_users

    with obj.app.store.transaction() as conn:
        removed = store_users.remove(conn, email)
    if not removed:
        raise ConfigError(f"no web user {email!r} (see: maillink users list)")
    click.echo(f"removed {email}")
