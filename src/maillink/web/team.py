"""The admins' Team page: each configured team connection (Microsoft tenant-wide, Google
domain-wide), the mailboxes connected through it, and "Connect / refresh members".

The button runs what `maillink accounts refresh` runs for that connection (list the members,
`sync_members`: newcomers added, leavers paused) in a background job (`TeamJobs`); the page
shows its report when done, or its failure in the one line the command line prints. Admins
only: a rep gets 403 on the page and on the form. The page names the group, domain or admin
that the members come from, never a secret (client secret, service-account key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, redirect, render_template, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response

from maillink.onboarding.team import TeamConnection, team_connections
from maillink.store import accounts
from maillink.store.users import WebUser
from maillink.web.auth import require_user, signed_in
from maillink.web.context import EXTENSION, web_context
from maillink.web.jobs import TeamJob, TeamJobs
from maillink.web.mailboxes import Mailbox, summaries

if TYPE_CHECKING:
    from maillink.app import App

bp = Blueprint("team", __name__)
TEAM_JOBS = "maillink.team_jobs"  # the Flask extension holding this process's `TeamJobs`
ADMINS_ONLY = "Only admins see the Team page and connect or refresh a team's mailboxes."
PROVIDERS = {"tenant": "Microsoft 365", "domain": "Google Workspace"}


@bp.record_once
def _keep_jobs(state: BlueprintSetupState) -> None:
    state.app.extensions[TEAM_JOBS] = TeamJobs(state.app.extensions[EXTENSION].app)


def team_jobs() -> TeamJobs:
    jobs: TeamJobs = current_app.extensions[TEAM_JOBS]
    return jobs


@dataclass(frozen=True)
class Row:
    mailbox: Mailbox
    connected_via: str
    note: str  # why it is paused, or its last problem


@dataclass(frozen=True)
class Shown:
    """One team connection as the page shows it."""

    via: str
    label: str
    provider: str
    source: str  # where the members come from, in words (no secret)
    consents: str  # the permissions the connection relies on
    rows: list[Row]
    job: TeamJob | None


def _admin() -> WebUser:
    """The signed-in admin; a rep is refused (403) with a page that says why."""
    user = require_user()
    if not user.is_admin:
        abort(Response(render_template("error.html", title="Forbidden", message=ADMINS_ONLY), 403))
    return user


def _configured(app: App) -> list[TeamConnection]:
    return [c for c in team_connections(app) if c.configured]


def _source(app: App, connection: TeamConnection) -> tuple[str, str]:
    """(where the members come from, the consents it needs), named from the configuration."""
    if connection.via == "tenant":
        microsoft = app.settings.microsoft
        tenant = urlsplit(microsoft.authority).path.strip("/") or "—"
        group = microsoft.members_group
        source = (
            f"group “{group}” of tenant {tenant}" if group else f"every user of tenant {tenant}"
        )
        consents = "application permissions Mail.ReadBasic.All, User.Read.All"
        return source, consents + (", GroupMember.Read.All" if group else "")
    gmail = app.settings.gmail
    consents = "a service account's domain-wide delegation of gmail.metadata"
    if gmail.members:
        return f"the {len(gmail.members)} addresses of [gmail] members", consents
    where = gmail.domain or "the whole Workspace"
    return (
        f"the directory of {where}, listed as {gmail.domain_wide_admin}",
        consents + " and admin.directory.user.readonly",
    )


def _row(box: Mailbox, account: accounts.Account) -> Row:
    shown = box.state in ("paused", "problem", "needs_reauth")
    return Row(box, account.connected_via, (account.last_error or "") if shown else "")


@bp.get("/team")
@signed_in
def team() -> str:
    _admin()
    context = web_context()
    jobs = team_jobs()
    shown = []
    for connection in _configured(context.app):
        with context.app.store.engine.connect() as conn:
            found = accounts.connected_via(conn, connection.provider, connection.via)
            boxes = summaries(conn, found, context.jobs)
        source, consents = _source(context.app, connection)
        shown.append(
            Shown(
                connection.via,
                connection.label,
                PROVIDERS[connection.via],
                source,
                consents,
                [_row(box, account) for box, account in zip(boxes, found, strict=True)],
                jobs.get(connection.via),
            )
        )
    running = any(s.job is not None and s.job.running for s in shown)
    return render_template("team.html", connections=shown, running=running)


@bp.post("/team/<via>/refresh")
@signed_in
def refresh(via: str) -> Any:
    """Start "Connect / refresh members" of one configured connection; the page shows it."""
    user = _admin()
    found = [c for c in _configured(web_context().app) if c.via == via]
    if not found:
        abort(404)
    team_jobs().start(found[0], user.email)
    return redirect(url_for("team.team", _anchor=via), code=303)
