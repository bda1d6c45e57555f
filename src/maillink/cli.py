"""`maillink` command line (docs/cli.md). Errors are one line; exit 0 done, 1 failed, 2 usage/config."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from maillink.errors import ConfigError, ConnectError

if TYPE_CHECKING:
    from maillink.app import App
    from maillink.onboarding.team import MembersReport
    from maillink.store.accounts import Account

log = logging.getLogger("maillink")


class Obj:
    """What every command shares: the --config path, built lazily into settings and an App."""

    def __init__(self, config: str | None, debug: bool):
        self.config = config
        self.debug = debug
        self._app: App | None = None

    @property
    def checked_app(self) -> App:
        """The App, with credentials.json read and checked now: fail before any work is done."""
        app = self.app
        _ = app.credentials
        app.check_keys()
        return app

    @property
    def app(self) -> App:
        if self._app is None:
            from maillink.app import App
            from maillink.config import load_settings

            self._app = App(load_settings(self.config))
        return self._app


pass_obj = click.make_pass_decorator(Obj)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class StopFlag:
    """First SIGINT/SIGTERM: finish the page in hand, checkpoint, exit. Second: stop at once."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.stopping = False
        self.say = say or (lambda text: click.echo("\n" + text, err=True))

    def __call__(self) -> bool:
        return self.stopping

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            raise KeyboardInterrupt
        self.stopping = True
        self.say("maillink: stopping after the page in hand (again to stop now)")

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    metavar="PATH",
    help="maillink.toml (default: $MAILLINK_CONFIG, else ./maillink.toml)",
)
@click.option("--debug", is_flag=True, help="Log debug lines and show tracebacks.")
@click.version_option(package_name="maillink")
@click.pass_context
def cli(ctx: click.Context, config: str | None, debug: bool) -> None:
    """Sync a sales team's mailboxes into the CRM, linked by Pipedrive's own rules."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # --debug opens maillink's own logs only: the OAuth libraries log token responses at DEBUG.
    logging.getLogger("maillink").setLevel(logging.DEBUG if debug else logging.WARNING)
    ctx.obj = Obj(config, debug)


# -- demo ---------------------------------------------------------------------------------------
@cli.command()
@click.option("--messages", default=2400, show_default=True, help="Size of the generated mailbox.")
@click.option("--seed", default=7, show_default=True, help="Seed of the generated team.")
@click.option(
    "--crm",
    type=click.Choice(["pipedrive", "hubspot"]),
    default="pipedrive",
    show_default=True,
    help="The CRM sandbox the pipeline writes to.",
)
def demo(messages: int, seed: int, crm: str) -> None:
    """Run the whole pipeline against the local sandbox and print a summary."""
    from maillink.demo import run_demo

    run_demo(messages=messages, seed=seed, crm=crm, out=click.echo)


# -- connect ------------------------------------------------------------------------------------
@cli.command()
@click.argument("provider", type=click.Choice(["gmail", "microsoft"]))
@click.option(
    "--no-browser", is_flag=True, help="Print the authorization URL instead of opening it."
)
@click.option("--device-code", is_flag=True, help="Microsoft only: use the device-code flow.")
@click.option(
    "--tenant-wide",
    is_flag=True,
    help="Microsoft only: connect every member's mailbox with the app's own permissions.",
)
@click.option(
    "--domain-wide",
    is_flag=True,
    help="Gmail only: connect every Workspace member's mailbox through a service account's "
    "domain-wide delegation.",
)
@click.option("--port", default=0, help="Loopback port for the redirect (0: any free port).")
@pass_obj
def connect(
    obj: Obj,
    provider: str,
    no_browser: bool,
    device_code: bool,
    port: int,
    tenant_wide: bool,
    domain_wide: bool,
) -> None:
    """Connect a mailbox through the provider's OAuth consent."""
    if domain_wide:
        if provider != "gmail" or device_code or no_browser or tenant_wide:
            raise click.UsageError("--domain-wide is for Gmail, without a sign-in option")
        from maillink.onboarding.google_domain import connect_domain_wide

        _echo_report("gmail domain-wide", connect_domain_wide(obj.checked_app))
        return
    if tenant_wide:
        if provider != "microsoft" or device_code or no_browser:
            raise click.UsageError("--tenant-wide is for Microsoft, without a sign-in option")
        from maillink.onboarding.microsoft_tenant import connect_tenant

        _echo_report("microsoft tenant-wide", connect_tenant(obj.checked_app))
        return
    if provider == "microsoft":
        account = obj.checked_app.connect_microsoft(
            open_browser=not no_browser, device_code=device_code, port=port
        )
    elif device_code:
        raise click.UsageError("--device-code is for Microsoft mailboxes only")
    else:
        account = obj.checked_app.connect_gmail(open_browser=not no_browser, port=port)
    click.echo(
        f"connected {account.email} ({account.provider}); "
        f"next: maillink backfill --account {account.email}"
    )


def _echo_report(label: str, report: MembersReport) -> None:
    click.echo(report.summary(label))
    changes = (("added", report.added), ("paused", report.paused), ("resumed", report.resumed))
    for verb, emails in changes:
        for email in emails:
            click.echo(f"  {verb} {email}")


# -- accounts -----------------------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def accounts(ctx: click.Context, as_json: bool) -> None:
    """List connected mailboxes (or pause, resume, remove one)."""
    if ctx.invoked_subcommand is not None:
        return
    from maillink.outbox import failed_count
    from maillink.push.gmail_watch import describe
    from maillink.push.graph_subscriptions import describe as describe_graph
    from maillink.store import accounts as store_accounts
    from maillink.store import push as store_push
    from maillink.store.read_models import messages_by_reason, waiting_threads_count

    app = ctx.ensure_object(Obj).app
    push_on = app.settings.gmail.push_topic is not None
    graph_on = app.settings.microsoft.notification_url is not None
    rows = []
    with app.store.engine.connect() as conn:
        subscriptions = store_push.by_account(conn)
        connected = store_accounts.all_accounts(conn)
        owners = _crm_owners(app, connected)
        for a in connected:
            count = sum(n for _id, _reason, n in messages_by_reason(conn, [a.id]))
            waiting = waiting_threads_count(conn, [a.id]).get(a.id, 0)
            rows.append(
                {
                    "email": a.email,
                    "provider": a.provider,
                    "status": a.status,
                    "connected_via": a.connected_via,
                    "messages": count,
                    "waiting": waiting,
                    "failed_deliveries": failed_count(conn, a.id),
                    "last_sync_at": a.last_sync_at.isoformat() if a.last_sync_at else None,
                    "last_error": a.last_error,
                    "push": describe_graph(
                        subscriptions.get(a.id, []), expected=graph_on and a.status == "active"
                    )
                    if a.provider == "microsoft"
                    else describe(
                        subscriptions.get(a.id, []),
                        expected=push_on and a.provider == "gmail" and a.status == "active",
                    ),
                    **_crm_user_fields(owners.get(a.email)),
                }
            )
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no mailbox connected yet: maillink connect gmail")
        return
    for r in rows:
        last = r["last_sync_at"] or "never"
        line = f"{r['email']:<36} {r['provider']:<9} {r['connected_via']:<6} {r['status']:<13} {r['messages']:>7} messages  {r['waiting']:>4} waiting  last sync {last}"
        line += f"  push: {r['push']}"
        if r["failed_deliveries"]:
            line += f"  {r['failed_deliveries']} failed CRM writes (maillink outbox list)"
        user = r["crm_user"]
        if user is not None:
            line += f"  crm user: {user['name'] or user['email'] or '?'} ({user['id']})"
        else:
            line += f"  crm user: none ({r['crm_user_reason']})"
        click.echo(line + (f"  error: {r['last_error']}" if r["last_error"] else ""))


def _crm_owners(app: App, found: list[Account]) -> dict[str, Any]:
    """Each mailbox's CRM user (`maillink.crm.owners.Ownership`) by address; a CRM that is not
    configured gives each mailbox none and says why."""
    from maillink.crm.owners import Mailbox, Ownership, ownerships

    mailboxes = [Mailbox(a.email, a.aliases, a.crm_user_id) for a in found]
    try:
        crm = app.crm
    except ConfigError as exc:
        return {m.email: Ownership(m.email, None, reason=f"no CRM: {exc}") for m in mailboxes}
    return dict(ownerships(crm, mailboxes))


def _crm_user_fields(found: Any) -> dict[str, Any]:
    """`crm_user` ({id, name, email, source}) or None, and `crm_user_reason` when None."""
    if found is None or found.user is None:
        return {"crm_user": None, "crm_user_reason": found.reason if found else "unknown"}
    user = found.user
    who = {"id": user.id, "name": user.name, "email": user.email, "source": found.source}
    return {"crm_user": who, "crm_user_reason": None}


def _set_status(obj: Obj, email: str, status: str | None) -> None:
    from maillink.push.gmail_watch import stop_watches
    from maillink.push.graph_subscriptions import stop_subscriptions
    from maillink.store import accounts as store_accounts

    account = obj.app.account(email)
    if status != store_accounts.ACTIVE:
        # Paused or removed: its Gmail watch is stopped, its Graph subscriptions deleted, first
        # (removal forgets its tokens).
        warning = stop_watches(obj.app, account) or stop_subscriptions(obj.app, account)
        if warning:
            click.echo(f"maillink: warning: {email}: {warning}", err=True)
    with obj.app.store.transaction() as conn:
        if status is None:
            store_accounts.remove(conn, account.id)
        else:
            store_accounts.set_status(conn, account.id, status)


@accounts.command()
@click.argument("email")
@pass_obj
def pause(obj: Obj, email: str) -> None:
    """Stop syncing a mailbox until it is resumed."""
    _set_status(obj, email, "paused")
    click.echo(f"paused {email}")


@accounts.command()
@click.argument("email")
@pass_obj
def resume(obj: Obj, email: str) -> None:
    """Sync a paused mailbox again."""
    _set_status(obj, email, "active")
    click.echo(f"resumed {email}")


@accounts.command()
@pass_obj
def refresh(obj: Obj) -> None:
    """Re-list the members of every team connection: add newcomers, pause leavers."""
    from maillink.onboarding.team import refresh_teams

    done = refresh_teams(obj.checked_app)
    if not done:
        click.echo("no team connection: maillink connect microsoft --tenant-wide")
    for refreshed in done:
        if refreshed.report is not None:
            _echo_report(refreshed.label, refreshed.report)
    failed = [r for r in done if r.report is None]
    for refreshed in failed:
        click.echo(f"maillink: error: {refreshed.label}: {refreshed.error}", err=True)
    if failed:
        sys.exit(1)


@accounts.command()
@click.argument("email")
@click.argument("user_id", required=False)
@click.option("--auto", is_flag=True, help="Match the CRM user by address again.")
@pass_obj
def owner(obj: Obj, email: str, user_id: str | None, auto: bool) -> None:
    """Set the CRM user who owns EMAIL's emails (USER_ID), or match it by address (--auto)."""
    from maillink.crm.owners import Mailbox, match_user, read_users
    from maillink.store import accounts as store_accounts

    if auto == (user_id is not None):
        raise click.UsageError("give the CRM user's id, or --auto to match it by address")
    account = obj.app.account(email)
    users, error = read_users(obj.checked_app.crm)
    wanted = user_id.strip() if user_id is not None else None
    if wanted is not None and users is None:
        click.echo(f"maillink: error: could not read the CRM's users: {error}", err=True)
        sys.exit(1)
    found = match_user(Mailbox(account.email, account.aliases, wanted), users, error)
    if wanted is not None and found.user is None:
        raise ConfigError(f"{wanted!r} is not an active CRM user (see the CRM's users list)")
    with obj.app.store.transaction() as conn:
        store_accounts.set_crm_user(conn, account.id, wanted)
    if found.user is not None:
        name = found.user.name or found.user.email
        click.echo(f"{account.email}: emails owned by CRM user {found.user.id} ({name})")
    else:
        click.echo(f"{account.email}: no CRM user ({found.reason})")


@accounts.command()
@click.argument("email")
@pass_obj
def remove(obj: Obj, email: str) -> None:
    """Forget a mailbox: its tokens, cursors and stored headers (CRM activities stay)."""
    _set_status(obj, email, None)
    click.echo(f"removed {email}")


# -- backfill and sync --------------------------------------------------------------------------
def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date: write YYYY-MM-DD") from None


def _targets(app: App, email: str | None) -> list[Account]:
    from maillink.store import accounts as store_accounts

    if email is not None:
        return [app.account(email)]
    with app.store.engine.connect() as conn:
        return [a for a in store_accounts.all_accounts(conn) if a.status == store_accounts.ACTIVE]


def _summary(result: Any, dry_run: bool = False) -> str:
    from maillink.sync_report import mailbox_line

    return mailbox_line(result, dry_run)


def _progress(enabled: bool, desc: str) -> tuple[Callable[[Any, Any], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=" msg", disable=not enabled, file=sys.stderr, leave=False)

    def on_page(page: Any, result: Any) -> None:
        bar.update(page.listed or len(page.messages))
        bar.set_postfix(new=result.messages, linked=sum(result.reasons.values()))

    return on_page, bar.close


@cli.command()
@click.option("--account", "email", metavar="EMAIL", help="Only this mailbox.")
@click.option("--since", metavar="YYYY-MM-DD", help="How far back to go (default: everything).")
@click.option("--dry-run", is_flag=True, help="Decide and report, write nothing.")
@pass_obj
def backfill(obj: Obj, email: str | None, since: str | None, dry_run: bool) -> None:
    """One-off import of a mailbox's past mail; resumable after Ctrl-C."""
    since_at = _parse_since(since)
    app = obj.checked_app
    targets = _targets(app, email)
    if not targets:
        click.echo("no active mailbox to backfill: maillink connect gmail")
        return
    failed = False
    from maillink.daemon import HELD_ELSEWHERE, Holding, held_elsewhere, hold_mailbox
    from maillink.sync import refresh_crm_mirror
    from maillink.sync_report import skip_line

    if not dry_run:
        refresh_crm_mirror(app.crm)  # a new address then costs no CRM read (docs/crm-writes.md)

    with StopFlag().installed() as stop:
        for account in targets:
            on_page, close = _progress(sys.stderr.isatty(), account.email)
            # A dry run writes nothing: no need to hold the mailbox against the daemons.
            hold = (
                contextlib.nullcontext(Holding(account, app.syncer(), stop))
                if dry_run
                else hold_mailbox(app, account, should_stop=stop)
            )
            try:
                with hold as job:
                    if job.syncer is None:
                        # The backfill did not happen: say who holds the mailbox, and fail.
                        job.result = held_elsewhere(app.store, account)
                        job.result.error = HELD_ELSEWHERE
                        click.echo(skip_line(job.result), err=True)
                    else:
                        job.result = job.syncer.backfill(
                            account,
                            app.provider_for(account),
                            since=since_at,
                            dry_run=dry_run,
                            on_page=on_page,
                            should_stop=job.should_stop,
                        )
            finally:
                close()
            result = job.result
            assert result is not None
            click.echo(("dry run: " if dry_run else "") + _summary(result, dry_run))
            failed |= result.error is not None
            if result.stopped:
                click.echo("stopped; run the same command again to resume")
                break
    app.save_unsaved_tokens()
    if failed:
        sys.exit(1)


@cli.command()
@click.option("--once", is_flag=True, help="One incremental round over every active mailbox.")
@click.option("--json", "as_json", is_flag=True, help="Print the round's outcome as JSON.")
@pass_obj
def sync(obj: Obj, once: bool, as_json: bool) -> None:
    """One incremental round over every active mailbox (for a schedule, use `maillink daemon`).

    Transient CRM failures are retried a few times within the run; a mailbox another running
    process holds is skipped and said on stderr (exit 0)."""
    if not once:
        raise click.UsageError("use `maillink sync --once`, or `maillink daemon` to keep syncing")
    from maillink.daemon import sync_round
    from maillink.sync import CrmRetry
    from maillink.sync_report import round_json, skip_line, takeover_line, totals_line

    with StopFlag().installed() as stop:
        results = sync_round(obj.checked_app, should_stop=stop, retry=CrmRetry())
    for result in results:
        if result.skipped:
            click.echo(skip_line(result), err=True)
        elif result.taken_over_from:
            click.echo(takeover_line(result), err=True)
    if as_json:
        _echo_json(round_json(results))
    else:
        for result in results:
            click.echo(_summary(result))
        click.echo(totals_line(results))
    if any(r.error for r in results):
        sys.exit(1)


@cli.command()
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Logs on stderr: plain text, or one JSON object per line.",
)
@click.option(
    "--ops-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of /healthz, /metrics and the webhooks (default: [daemon] ops_port; 0: any free).",
)
@click.option("--no-ops", is_flag=True, help="Serve no /healthz, /metrics or webhooks.")
@pass_obj
def daemon(obj: Obj, log_format: str, ops_port: int | None, no_ops: bool) -> None:
    """Sync every active mailbox on a schedule until SIGTERM/SIGINT."""
    from maillink.daemon import run_daemon
    from maillink.ops.logs import configure

    configure(log_format, debug=obj.debug)
    out = click.echo if log_format == "text" else None
    say = None if log_format == "text" else logging.getLogger("maillink.daemon").warning
    with StopFlag(say).installed() as stop:
        run_daemon(
            obj.checked_app,
            should_stop=stop,
            out=out,
            serve_ops=False if no_ops else None,
            ops_port=ops_port,
        )


# -- choices and explanations -------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_obj
def pending(obj: Obj, as_json: bool) -> None:
    """Threads waiting for a choice between several open items, with their candidates."""
    from maillink.explain import pending as waiting

    with obj.app.store.engine.connect() as conn:
        rows = waiting(conn)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no thread is waiting for a choice")
        return
    for row in rows:
        click.echo(
            f"thread {row['thread']}  {row['account']}  {row['subject']!r}  ({row['messages']} messages)"
        )
        for c in row["candidates"]:
            title = f" {c['title']!r}" if c["title"] else ""
            click.echo(
                f"    {c['item']}{title} {c['status'] or ''} created {c['created_at'] or '?'}"
            )
        click.echo(f"    choose with: maillink choose {row['thread']} ITEM")


@cli.command()
@click.argument("thread_id", type=int)
@click.argument("item")
@pass_obj
def choose(obj: Obj, thread_id: int, item: str) -> None:
    """Link a thread to ITEM (deal:ID, lead:ID or project:ID); earlier messages follow (rule 5)."""
    from maillink.choices import choose_item, parse_item

    try:
        # well-formed ids only; choose_item checks the thread's persons
        ref = parse_item(item, obj.checked_app.settings.crm.kind)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    outcome = choose_item(obj.checked_app, thread_id, ref)
    click.echo(outcome)


@cli.command()
@click.argument("target", metavar="THREAD_ID|MESSAGE_ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_obj
def explain(obj: Obj, target: str, as_json: bool) -> None:
    """Why is (or isn't) this thread or email linked?"""
    from maillink.explain import explain as explain_target

    with obj.app.store.engine.connect() as conn:
        found = explain_target(conn, target)
    if found is None:
        raise ConfigError(
            f"no thread or message {target!r} (see: maillink pending, or a Message-ID)"
        )
    if as_json:
        _echo_json(found)
        return
    link = found["linked"] or ("waiting for a choice" if found["waiting"] else "no item")
    click.echo(f"thread {found['thread']} of {found['account']}: {found['subject']!r}")
    click.echo(
        f"  created {found['created_at']}; linked to: {link} ({found['link_source'] or '-'})"
    )
    for c in found["candidates"]:
        click.echo(f"  candidate {c['item']} {c['title'] or ''} ({c['status'] or '?'})")
    for m in found["messages"]:
        mark = "*" if found.get("focus") == m["message"] else " "
        items = ", ".join(m["items"]) or "persons only" if m["person_ids"] else "nothing written"
        click.echo(f" {mark}{m['date']} {m['direction']:<8} {m['reason']:<27} → {items}")
        if m["detail"]:
            click.echo(f"      {m['detail']}")
        delivery = m.get("delivery") or {}
        if delivery.get("crm_answer"):
            click.echo(f"      CRM write {delivery['state']}: {delivery['crm_answer']}")


# -- keys ---------------------------------------------------------------------------------------
@cli.group()
def keys() -> None:
    """Encryption keys of the stored tokens."""


@keys.command()
def generate() -> None:
    """Print a new encryption key (for encryption_key in credentials.json)."""
    from maillink.secrets import TokenCipher

    click.echo(TokenCipher.generate_key())


@keys.command()
@pass_obj
def rotate(obj: Obj) -> None:
    """Re-encrypt every stored token under the first (newest) key; web sessions end."""
    from maillink.web.commands import end_web_sessions

    count = obj.app.rotate_keys()
    click.echo(f"re-encrypted {count} stored token(s) under the newest key")
    end_web_sessions(obj.app)


from maillink.web.commands import serve, users  # noqa: E402  (click only: cheap to import)

cli.add_command(serve)
cli.add_command(users)

from maillink.cli_outbox import outbox  # noqa: E402  (click only: cheap to import)

cli.add_command(outbox)

from maillink.cli_webhooks import crm  # noqa: E402  (click only: cheap to import)

cli.add_command(crm)


@crm.command("connect")
@click.argument("kind", type=click.Choice(["hubspot"]))
@click.option("--no-browser", is_flag=True, help="Print the authorization URL instead.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8757,
    show_default=True,
    help="Loopback port of the redirect (the app's redirect URL is "
    "http://localhost:PORT/oauth-callback).",
)
@pass_obj
def crm_connect(obj: Obj, kind: str, no_browser: bool, port: int) -> None:
    """Connect the CRM through its public app (OAuth): the refresh token is stored encrypted."""
    from maillink.crm.hubspot_oauth import connect_hubspot

    app = obj.checked_app
    oauth_app = app.hubspot_app()
    _ = app.cipher  # no encryption key: say so before the consent, not after
    grant = connect_hubspot(oauth_app, open_browser=not no_browser, port=port)
    app.save_hubspot_grant(grant)
    hub = f" (account {grant.hub_id})" if grant.hub_id is not None else ""
    click.echo(f"connected HubSpot{hub}; the daemon uses it from its next start")
    from maillink.crm.hubspot import HubSpotCRM

    crm = app.crm  # the email key's property now, not at the first write (created if it may)
    found = crm.check_key_property() if isinstance(crm, HubSpotCRM) else None
    if found is not None:
        click.echo(found.describe())


# -- entry point --------------------------------------------------------------------------------
def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"maillink: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    from maillink.crm.base import CRMError
    from maillink.providers.base import ProviderError

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="maillink", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except (CRMError, ProviderError, ConnectError) as exc:
        _fail(str(exc) or type(exc).__name__, 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # the last resort: one line, the traceback only with --debug
        if debug:
            raise
        _fail(f"{type(exc).__name__}: {exc} (run with --debug for details)", 1)
