"""`maillink crm webhooks install|status`: the Pipedrive webhooks the daemon's endpoint needs,
created or repaired through Pipedrive's API (docs/operations.md "Webhooks and Gmail push")."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from maillink.errors import ConfigError

if TYPE_CHECKING:
    from maillink.app import App
    from maillink.crm.pipedrive_webhooks import BasicAuth, PipedriveWebhooks


def _app(ctx: click.Context) -> App:
    app: App = ctx.find_root().obj.app
    return app


def _webhooks(app: App) -> PipedriveWebhooks:
    """maillink's view of the company's webhooks, through the one Pipedrive transport."""
    from maillink.crm.pipedrive_http import PipedriveHTTP
    from maillink.crm.pipedrive_webhooks import PipedriveWebhooks

    pipedrive = app.credentials.pipedrive
    where = app.settings.credentials_path
    if pipedrive is None:
        raise ConfigError(f'{where}: pipedrive is missing: add {{"api_token": "…"}}')
    if pipedrive.api_token is None:
        raise ConfigError(
            f"{where}: pipedrive: OAuth app credentials are not supported yet; "
            "set pipedrive.api_token (Pipedrive → Personal preferences → API)"
        )
    return PipedriveWebhooks(
        PipedriveHTTP(app.settings.crm.base_url, api_token=pipedrive.api_token)
    )


def _auth(app: App) -> BasicAuth:
    from maillink.crm.pipedrive_webhooks import BasicAuth

    webhook = app.credentials.webhook
    if webhook is None:
        raise ConfigError(
            f"{app.settings.credentials_path}: webhook is missing: add "
            '{"username": "…", "password": "…"} (the basic auth the daemon\'s '
            "/webhooks/pipedrive expects; Pipedrive sends it with every webhook)"
        )
    return BasicAuth(webhook.username, webhook.password)


def _url(app: App, given: str | None, *, required: bool) -> str | None:
    """The subscription URL: from --url, else `[daemon] public_url`."""
    from maillink.config import check_endpoint
    from maillink.crm.pipedrive_webhooks import subscription_url

    base: str | None = app.settings.daemon.public_url  # checked when the config was read
    if given is not None:
        base = check_endpoint(given, "--url").rstrip("/")
        if urlsplit(base).query or urlsplit(base).fragment:
            raise ConfigError("--url must have no query or fragment")
    if base is None:
        if not required:
            return None
        raise ConfigError(
            "no public URL for the daemon: pass --url https://YOUR-HOST or set "
            '[daemon] public_url = "https://YOUR-HOST" in maillink.toml'
        )
    return subscription_url(base)


def _refused_token(app: App, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{app.settings.credentials_path}: Pipedrive refused pipedrive.api_token ({exc}); "
        "check it in Pipedrive → Personal preferences → API"
    )


@click.group()
def crm() -> None:
    """The CRM's side of maillink: its webhooks."""


@crm.group()
def webhooks() -> None:
    """The Pipedrive webhooks the daemon's /webhooks/pipedrive needs."""


@webhooks.command()
@click.option(
    "--url", metavar="URL", help="The daemon's public base URL (default: [daemon] public_url)."
)
@click.option(
    "--force", is_flag=True, help="Re-create maillink's webhooks even if they look right."
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_context
def install(ctx: click.Context, url: str | None, force: bool, as_json: bool) -> None:
    """Create or repair maillink's webhooks in Pipedrive (others' webhooks are never touched)."""
    from maillink.crm.base import CRMAuthError

    app = _app(ctx)
    target = _url(app, url, required=True)
    assert target is not None
    auth = _auth(app)
    hooks = _webhooks(app)
    try:
        plan = hooks.install(target, auth, force=force)
    except CRMAuthError as exc:
        raise _refused_token(app, exc) from None
    if as_json:
        click.echo(json.dumps(plan.as_json(), indent=2))
        return
    click.echo(f"maillink's Pipedrive webhooks post to {plan.url}")
    for name, hook_id in sorted(plan.kept.items()):
        click.echo(f"  {name:<8} kept (webhook {hook_id})")
    for name, hook_id in sorted(plan.created.items()):
        click.echo(f"  {name:<8} created (webhook {hook_id})")
    for name in plan.not_offered:
        click.echo(f"  {name:<8} not offered by this Pipedrive: its changes are polled")
    if plan.removed:
        removed = ", ".join(str(i) for i in plan.removed)
        click.echo(f"  removed {len(plan.removed)} old or broken webhook(s) of maillink: {removed}")
    if not plan.changed:
        click.echo("nothing to change")


def _status_line(row: dict[str, Any]) -> str:
    delivered = row["last_delivery_time"] or "never"
    answer = f" (HTTP {row['last_http_status']})" if row["last_http_status"] is not None else ""
    active = "active" if row["is_active"] else "inactive"
    line = (
        f"  {row['id']:>6}  {row['event_action']}.{row['event_object']:<8} {row['state']:<9} "
        f"{active:<8} last delivery {delivered}{answer}"
    )
    if row["problems"]:
        line += "\n          " + "; ".join(row["problems"])
    return line


@webhooks.command()
@click.option(
    "--url", metavar="URL", help="The daemon's public base URL (default: [daemon] public_url)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """maillink's webhooks in Pipedrive, their state, and what is missing."""
    from maillink.crm.base import CRMAuthError

    app = _app(ctx)
    target = _url(app, url, required=False)
    webhook = app.credentials.webhook
    hooks = _webhooks(app)
    try:
        found = hooks.status(target, webhook.username if webhook else None)
    except CRMAuthError as exc:
        raise _refused_token(app, exc) from None
    if webhook is None:
        found["problems"] = ["credentials.json has no webhook: the daemon answers 404"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"expected URL: {found['url'] or '(not configured: [daemon] public_url or --url)'}")
    if not found["webhooks"]:
        click.echo("  no webhook of maillink in Pipedrive")
    for row in found["webhooks"]:
        click.echo(_status_line(row))
    for problem in found.get("problems", []):
        click.echo(f"problem: {problem}")
    if found["missing"]:
        click.echo(
            f"missing: {', '.join(found['missing'])} "
            "(maillink crm webhooks install creates those Pipedrive offers)"
        )
