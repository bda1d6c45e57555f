"""The team model: the mailboxes an admin connected at once, kept in step with the directory.

A team connection (Microsoft tenant-wide through client credentials, Google domain-wide through
a service account's delegation) lists the directory's members; `sync_members` makes the store's
mailboxes of that connection follow the list:

- a new member is added as a mailbox (`connected_via` = the connection, its directory id, and no
  token of its own: the `token` column stays NULL, the round uses the app's credentials);
- a mailbox whose address is no longer a member is paused, never deleted (its cursors, threads
  and CRM links stay), with `last_error` = `LEFT_DIRECTORY`, the mark that this process paused it;
- a paused mailbox that is a member again is resumed only when it carries that mark: a mailbox
  that a person paused (`maillink accounts pause`, no mark) stays paused; a member's mailbox
  that needs re-authorisation (the app's credentials were refused: delegation withdrawn, an
  application permission or consent revoked) is active again once the listing succeeded with
  those credentials and the connection's `check` (when it has one) reads the mailbox again;
  otherwise it keeps needing re-authorisation, with the check's reason;
- a new member whose mailbox the `check` cannot read (a Microsoft user with a `mail` address but
  no Exchange Online mailbox) is not added: the report counts it, the next refresh checks again;
- a mailbox that a rep connected themself (`connected_via` "user") is left alone, member or not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from maillink.http_policy import RULES, TEAM_RULES
from maillink.providers.retry import RetryPolicy
from maillink.store import accounts

if TYPE_CHECKING:
    from maillink.app import App

# The `last_error` of a mailbox paused because it left the directory (or the group); only a
# mailbox paused with this mark is resumed when it comes back.
LEFT_DIRECTORY = "paused: no longer a member of the directory or group (maillink accounts refresh)"

# What a team connection's mailboxes are read with (shown by `maillink accounts --json`).
SCOPES = {
    ("microsoft", "tenant"): "Mail.ReadBasic.All",
    ("gmail", "domain"): "https://www.googleapis.com/auth/gmail.metadata",
}
TEAM_CONNECTIONS = frozenset({"tenant", "domain"})
# A team mailbox refused: no rep can reconnect it, an admin restores the access.
TEAM_REAUTH_HINT = (
    "an admin must restore the app's access (delegation, permission or consent), then run "
    "maillink accounts refresh"
)


def team_policy(policy: RetryPolicy | None) -> RetryPolicy:
    """The retry policy of a team connection's mailbox: the table's `TEAM_RULES` (a refusal of
    the app's credentials needs re-authorisation) unless `policy` brings rules of its own."""
    policy = policy or RetryPolicy()
    if policy.rules is not RULES:
        return policy
    return dataclasses.replace(policy, rules=TEAM_RULES, reauth_hint=TEAM_REAUTH_HINT)


@dataclass(frozen=True)
class Member:
    email: str  # the mailbox address (lower-cased)
    directory_id: str | None  # Graph user id / Google user id


# Why a member's mailbox cannot be read now, None when it can: asked (outside the transaction)
# before a new member is added (account None) and before a mailbox that needs
# re-authorisation is made active again; the connection's own credentials answer it.
Check = Callable[[Member, accounts.Account | None], str | None]


@dataclass
class MembersReport:
    added: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    kept: int = 0
    # Members not added, with why their mailbox cannot be read (no Exchange Online mailbox…).
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self, label: str) -> str:
        """One line for the command line: what the refresh changed."""
        parts = [f"{len(self.added)} added", f"{len(self.paused)} paused"]
        parts += [f"{len(self.resumed)} resumed", f"{self.kept} unchanged"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} not added (no mailbox to read)")
        return f"{label}: " + ", ".join(parts)


def sync_members(
    app: App, provider: str, via: str, members: Sequence[Member], check: Check | None = None
) -> MembersReport:
    """Make the mailboxes of `provider` connected `via` a team connection follow `members`
    (in one transaction); returns what changed."""
    if via not in TEAM_CONNECTIONS:
        raise ValueError(f"not a team connection: {via!r}")
    wanted: dict[str, Member] = {}
    for member in members:
        email = member.email.strip().lower()
        if email:
            wanted.setdefault(email, Member(email, member.directory_id))
    problems = _checked(app, provider, via, wanted, check) if check is not None else {}
    report = MembersReport()
    scopes = SCOPES.get((provider, via), "")
    with app.store.transaction() as conn:
        present = {a.email: a for a in accounts.connected_via(conn, provider, via)}
        for email, member in sorted(wanted.items()):
            account = present.get(email)
            if account is None and email in problems:
                report.skipped[email] = problems[email]
                continue
            if account is None:
                made = accounts.add_member(conn, email, provider, via, member.directory_id, scopes)
                if made is not None:
                    report.added.append(email)
                else:  # already a mailbox of its own (a rep connected it): left alone
                    report.kept += 1
                continue
            if member.directory_id and account.directory_id != member.directory_id:
                accounts.set_directory_id(conn, account.id, member.directory_id)
            if account.status == accounts.NEEDS_REAUTH and email in problems:
                # Still refused: it keeps needing re-authorisation, with today's reason.
                accounts.set_status(conn, account.id, accounts.NEEDS_REAUTH, problems[email])
                report.kept += 1
            elif _back(account):
                accounts.set_status(conn, account.id, accounts.ACTIVE)
                report.resumed.append(email)
            else:
                report.kept += 1
        for email, account in sorted(present.items()):
            if email in wanted or account.status == accounts.PAUSED:
                continue
            # Active or needing re-authorisation: either way it is no longer ours to read.
            accounts.set_status(conn, account.id, accounts.PAUSED, LEFT_DIRECTORY)
            report.paused.append(email)
    return report


def _checked(
    app: App, provider: str, via: str, wanted: dict[str, Member], check: Check
) -> dict[str, str]:
    """What `check` says of the members to add and of the mailboxes to re-authorise."""
    with app.store.engine.connect() as conn:
        present = {a.email: a for a in accounts.connected_via(conn, provider, via)}
    problems: dict[str, str] = {}
    for email, member in sorted(wanted.items()):
        account = present.get(email)
        if account is not None and account.status != accounts.NEEDS_REAUTH:
            continue
        problem = check(member, account)
        if problem is not None:
            problems[email] = problem
    return problems


def _back(account: accounts.Account) -> bool:
    """A member's mailbox to make active again: paused by a refresh (not by a person), or
    needing re-authorisation (the app's credentials were refused: the listing that just worked
    with them is the new consent; a mailbox of a team connection has none of its own)."""
    if account.status == accounts.PAUSED:
        return account.last_error == LEFT_DIRECTORY
    return account.status == accounts.NEEDS_REAUTH


@dataclass(frozen=True)
class Refreshed:
    """One team connection's refresh: its label and report, or why it failed."""

    label: str
    report: MembersReport | None
    error: str | None = None


def refresh_teams(app: App) -> list[Refreshed]:
    """`maillink accounts refresh` (and the daemon, daily): re-list the members of every
    configured team connection and make its mailboxes follow. A connection that fails is
    reported and the others still run."""
    done: list[Refreshed] = []
    for connection in team_connections(app):
        refreshed = refresh_team(app, connection)
        if refreshed is not None:
            done.append(refreshed)
    return done


def refresh_team(app: App, connection: TeamConnection) -> Refreshed | None:
    """Re-list one team connection's members and make its mailboxes follow (the web app's
    "Connect / refresh members"); None when it turns out not to be configured. A failure is
    returned, with the one line `maillink accounts refresh` prints, never raised."""
    from maillink.errors import ConfigError, ConnectError
    from maillink.providers.base import ProviderError

    try:
        found = connection.members()
        if found is None:
            return None
        report = sync_members(app, connection.provider, connection.via, found, connection.check)
    except (ConfigError, ConnectError, ProviderError) as error:
        return Refreshed(connection.label, None, str(error) or type(error).__name__)
    return Refreshed(connection.label, report)


@dataclass(frozen=True)
class TeamConnection:
    """A team connection: its label, provider, `connected_via`, how to list its members (None
    from `members()`: not configured after all), whether its settings say it is configured
    (known without listing anyone: what the web app's Team page shows), and how to check that a
    member's mailbox can be read (see `sync_members`)."""

    label: str
    provider: str
    via: str  # "tenant" | "domain"
    members: Callable[[], Sequence[Member] | None]
    configured: bool = True
    check: Check | None = None


def team_connections(app: App) -> list[TeamConnection]:
    """Each configured team connection: Microsoft tenant-wide when a mailbox is connected so or
    `[microsoft] members_group` is set; Google domain-wide when `maillink.onboarding.google_domain`
    says so (its `domain_members` answers None when it is not configured)."""
    with app.store.engine.connect() as conn:
        tenant = bool(accounts.connected_via(conn, "microsoft", "tenant"))
    found: list[TeamConnection] = []
    if tenant or app.settings.microsoft.members_group is not None:
        from maillink.onboarding.microsoft_tenant import mailbox_problem, tenant_members

        found.append(
            TeamConnection(
                "microsoft tenant-wide",
                "microsoft",
                "tenant",
                lambda: tenant_members(app),
                check=lambda member, _account: mailbox_problem(app, member),
            )
        )
    from maillink.onboarding.google_domain import domain_members
    from maillink.onboarding.google_domain import mailbox_problem as gmail_problem

    gmail = app.settings.gmail
    found.append(
        TeamConnection(
            "google domain-wide",
            "gmail",
            "domain",
            lambda: domain_members(app),
            bool(gmail.members or gmail.domain_wide_admin),
            lambda member, account: gmail_problem(app, member, account),
        )
    )
    return found
