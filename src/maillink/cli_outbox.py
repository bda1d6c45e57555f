"""`maillink outbox list|retry`: the CRM writes that Pipedrive refused for good, and retrying them
once the cause is fixed (docs/crm-writes.md)."""

from __future__ import annotations

import json
from typing import Any

import click


def _app(ctx: click.Context, *, checked: bool = False) -> Any:
    obj = ctx.find_root().obj
    return obj.checked_app if checked else obj.app


@click.group()
def outbox() -> None:
    """CRM writes the CRM refused for good: list them, retry them."""


@outbox.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_failed(ctx: click.Context, as_json: bool) -> None:
    """The emails whose activity the CRM refused, with the CRM's answer."""
    from maillink.store.outbox import failed_deliveries

    app = _app(ctx)
    with app.store.engine.connect() as conn:
        rows = failed_deliveries(conn)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no failed CRM write")
        return
    for row in rows:
        items = ", ".join(row["items"]) or "persons only"
        click.echo(
            f"{row['key']}  {row['account'] or '-'} thread {row['thread'] or '-'}  "
            f"{row['subject']!r} → {items}  failed {row['failed_at']}"
        )
        click.echo(f"    CRM answer: {row['crm_answer']}")
    click.echo(f"{len(rows)} failed; once the cause is fixed: maillink outbox retry KEY (or --all)")


@outbox.command()
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option("--all", "retry_all", is_flag=True, help="Retry every failed write.")
@click.pass_context
def retry(ctx: click.Context, keys: tuple[str, ...], retry_all: bool) -> None:
    """Send failed writes again now (KEY is the email's maillink-id, as `outbox list` shows)."""
    from maillink.errors import ConfigError
    from maillink.outbox import Outbox
    from maillink.store.outbox import failed_deliveries

    if bool(keys) == retry_all:
        raise click.UsageError(
            "name the KEY of a failed write (see: maillink outbox list), or --all"
        )
    # A Message-ID may be given as the mail shows it, in angle brackets.
    keys = tuple(k[1:-1] if k.startswith("<") and k.endswith(">") else k for k in keys)
    app = _app(ctx, checked=True)
    if keys:
        with app.store.engine.connect() as conn:
            known = {row["key"] for row in failed_deliveries(conn, list(keys))}
        unknown = [key for key in keys if key not in known]
        if unknown:
            raise ConfigError(f"no failed write {unknown[0]!r} (see: maillink outbox list)")
    linker = app.linker()
    sender = Outbox(app.store, app.crm, redecide=linker.redecide)
    count = sender.retry(list(keys) if keys else None)
    delivery = sender.deliver()
    with app.store.engine.connect() as conn:
        still = failed_deliveries(conn, list(keys) if keys else None)
    click.echo(
        f"retried {count} write(s): created {delivery.created}, updated {delivery.updated}, "
        f"decided again {delivery.redecided}, failed again {len(still)}"
    )
    for row in still:
        click.echo(f"    {row['key']}: {row['crm_answer']}")
    if still:
        raise SystemExit(1)
