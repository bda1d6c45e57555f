"""Google Workspace connected domain-wide: a service account with delegation impersonates each
member, against the Google and Pipedrive sandboxes through real HTTP and the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from maillink.app import App
from maillink.config import load_settings
from maillink.errors import ConfigError
from maillink.onboarding.google_domain import (
    SCOPE_DIRECTORY_USERS,
    DomainWideError,
    connect_domain_wide,
    domain_members,
)
from maillink.onboarding.team import LEFT_DIRECTORY
from maillink.sandbox.google import SCOPE_METADATA, GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace

DOMAIN = "acme.example"
ADMIN = f"admin@{DOMAIN}"
REPS = [f"{name}@{DOMAIN}" for name in ("ann", "bob", "cy")]
CUSTOMER = "buyer@customer.example"


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Team:
    google: GoogleSandbox
    pipedrive: PipedriveSandbox
    key: dict[str, Any]
    config: Path
    folder: Path
    written: str = ""
    gmail: dict[str, Any] = field(default_factory=dict)

    def configure(self, **gmail: Any) -> None:
        """[gmail] keys (these replace earlier ones) beside the sandbox's api_endpoint."""
        self.written = self.written or self.config.read_text()
        self.gmail.update(gmail)
        head, _, rest = self.written.partition("[gmail]\n")
        endpoint, _, tail = rest.partition("\n")
        lines = [f"{name} = {json.dumps(value)}" for name, value in self.gmail.items()]
        self.config.write_text(head + "[gmail]\n" + "\n".join([endpoint, *lines]) + "\n" + tail)

    def app(self) -> App:
        return App(load_settings(self.config, env={}))

    def cli(self, *args: str) -> Ran:
        env = dict(os.environ, MAILLINK_CONFIG=str(self.config))
        done = subprocess.run(
            [sys.executable, "-m", "maillink", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def team(tmp_path: Path) -> Iterator[Team]:
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        google.workspace.add_user(ADMIN, admin=True)
        for rep in REPS:
            google.workspace.add_user(rep)
        google.add_mailbox("stranger@elsewhere.example")  # Gmail, not of the Workspace
        key = google.workspace.create_service_account()
        google.workspace.delegate(key["client_id"], [SCOPE_METADATA, SCOPE_DIRECTORY_USERS])
        config = write_workspace(tmp_path, google, pipedrive, internal_domains=[DOMAIN])
        (tmp_path / "sa-key.json").write_text(json.dumps(key))
        credentials = json.loads((tmp_path / "credentials.json").read_text())
        credentials["google_service_account_file"] = "sa-key.json"
        (tmp_path / "credentials.json").write_text(json.dumps(credentials))
        made = Team(google, pipedrive, key, config, tmp_path)
        made.configure(domain_wide_admin=ADMIN, directory_endpoint=google.directory_endpoint)
        yield made


def statuses(app: App) -> dict[str, tuple[str, str, str | None]]:
    return {
        a.email: (a.status, a.connected_via, a.directory_id)
        for a in app.store_accounts(active_only=False)
    }


def test_connect_domain_wide_adds_every_member_and_a_round_syncs_with_the_delegated_token(
    team: Team,
) -> None:
    google, pipedrive = team.google, team.pipedrive
    person = pipedrive.add_person("Buyer", [CUSTOMER])
    when = datetime.now(UTC) - timedelta(hours=1)
    google.add_message(
        REPS[1],
        headers=[
            ("From", CUSTOMER),
            ("To", REPS[1]),
            ("Subject", "Quote"),
            ("Date", when.strftime("%a, %d %b %Y %H:%M:%S +0000")),
            ("Message-ID", "<quote-1@customer.example>"),
        ],
        internal_date=when,
    )

    done = team.cli("connect", "gmail", "--domain-wide")
    assert done.code == 0, done.err
    summary = done.out.splitlines()[0]
    assert summary == "gmail domain-wide: 4 added, 0 paused, 0 resumed, 0 unchanged"
    app = team.app()
    try:
        found = statuses(app)
        assert set(found) == {ADMIN, *REPS}
        assert found[REPS[1]] == ("active", "domain", google.workspace.user_id(REPS[1]))
        assert all(a.token is None for a in app.store_accounts())  # no token per mailbox
    finally:
        app.close()

    synced = team.cli("sync", "--once")
    assert synced.code == 0, synced.err
    fetched = {(box, who) for box, _, who in google.message_fetches()}
    assert [box for box, _ in fetched] == [REPS[1]]
    activities = pipedrive.activities()
    assert len(activities) == 1
    assert person in {p["person_id"] for p in activities[0]["participants"]}

    listed = json.loads(team.cli("accounts", "--json").out)
    assert {a["connected_via"] for a in listed} == {"domain"}
    secret = team.key["private_key"].splitlines()[1]
    database = (team.folder / "maillink.db").read_bytes()
    assert secret.encode() not in database and team.key["private_key_id"].encode() not in database
    assert secret not in done.out + done.err + synced.out + synced.err


def test_a_member_removed_from_the_directory_is_paused_by_accounts_refresh(team: Team) -> None:
    app = team.app()
    try:
        connect_domain_wide(app)
    finally:
        app.close()
    team.google.workspace.remove_user(REPS[0])
    team.google.workspace.suspend_user(REPS[2])
    refreshed = team.cli("accounts", "refresh")
    assert refreshed.code == 0, refreshed.err
    assert "google domain-wide: 0 added, 2 paused" in refreshed.out
    app = team.app()
    try:
        found = statuses(app)
        assert found[REPS[0]][0] == found[REPS[2]][0] == "paused"
        assert found[REPS[1]][0] == "active"
        paused = {a.email: a.last_error for a in app.store_accounts(active_only=False)}
        assert paused[REPS[0]] == LEFT_DIRECTORY
    finally:
        app.close()
    team.google.workspace.suspend_user(REPS[2], suspended=False)
    again = team.cli("accounts", "refresh")
    assert "1 resumed" in again.out, again.out + again.err


def test_an_explicit_member_list_needs_no_directory(team: Team) -> None:
    team.configure(members=[REPS[0], REPS[2].upper()])
    app = team.app()
    try:
        assert [m.email for m in domain_members(app) or []] == [ADMIN, REPS[0], REPS[2]][1:]
        report = connect_domain_wide(app)
        assert report.added == sorted([REPS[0], REPS[2]])
    finally:
        app.close()
    assert team.google.meter.requests["directory.users.list"] == 0


def refused(team: Team) -> str:
    app = team.app()
    try:
        with pytest.raises(DomainWideError) as error:
            connect_domain_wide(app)
        assert app.store_accounts(active_only=False) == []
    finally:
        app.close()
    return str(error.value)


def test_refusals_say_what_to_fix(team: Team) -> None:
    client_id = team.key["client_id"]
    workspace = team.google.workspace

    workspace.undelegate(client_id)
    assert refused(team) == (
        f"domain-wide delegation is not granted for client id {client_id} with scope "
        f"{SCOPE_DIRECTORY_USERS}: add it in the Admin console, Security → API controls → "
        "Domain-wide delegation"
    )

    workspace.delegate(client_id, [SCOPE_DIRECTORY_USERS])  # gmail.metadata not granted
    assert refused(team).startswith(
        f"domain-wide delegation is not granted for client id {client_id} with scope "
        f"{SCOPE_METADATA}:"
    )

    workspace.delegate(client_id, [SCOPE_METADATA])
    team.configure(members=[REPS[0], "stranger@elsewhere.example"])
    assert refused(team).startswith(
        "Google refused to impersonate stranger@elsewhere.example (invalid_grant)"
    )


def test_a_non_admin_cannot_list_the_directory_and_the_cli_says_so_in_one_line(
    team: Team,
) -> None:
    team.configure(domain_wide_admin=REPS[0])
    ran = team.cli("connect", "gmail", "--domain-wide")
    assert ran.code == 1
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in ran.err
    assert f"domain_wide_admin {REPS[0]} (403)" in lines[0]


def test_configuration_mistakes_exit_2(team: Team) -> None:
    credentials = json.loads((team.folder / "credentials.json").read_text())
    credentials["google_service_account"] = team.key
    (team.folder / "credentials.json").write_text(json.dumps(credentials))
    both = team.cli("connect", "gmail", "--domain-wide")
    assert both.code == 2 and "not both" in both.err
    assert team.key["private_key"].splitlines()[1] not in both.err

    del credentials["google_service_account_file"]
    (team.folder / "credentials.json").write_text(json.dumps(credentials))
    usage = team.cli("connect", "microsoft", "--domain-wide")
    assert usage.code == 2


def test_domain_wide_is_not_configured_without_admin_or_members(tmp_path: Path) -> None:
    config = tmp_path / "maillink.toml"
    config.write_text('[crm]\nbase_url = "https://x.pipedrive.com"\n')
    app = App(load_settings(config, env={}))
    try:
        assert domain_members(app) is None
    finally:
        app.close()


def test_a_listed_admin_without_a_service_account_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    config = tmp_path / "maillink.toml"
    config.write_text(
        '[crm]\nbase_url = "https://x.pipedrive.com"\n[gmail]\ndomain_wide_admin = "a@b.example"\n'
    )
    (tmp_path / "credentials.json").write_text("{}")
    app = App(load_settings(config, env={}))
    refuse: Callable[[], object] = lambda: domain_members(app)  # noqa: E731
    try:
        with pytest.raises(ConfigError, match="google_service_account is missing"):
            refuse()
    finally:
        app.close()


def test_rounds_reuse_the_delegated_token_until_it_is_refused(team: Team) -> None:
    team.google.add_message(
        REPS[0],
        headers=[("From", CUSTOMER), ("To", REPS[0]), ("Subject", "Hello")],
        internal_date=datetime.now(UTC) - timedelta(hours=2),
    )
    app = team.app()
    try:
        connect_domain_wide(app)
        ann = app.account(REPS[0])
        tokens = team.google.meter.requests
        before = tokens["oauth.token"]
        first = app.syncer().run(ann, app.provider_for(ann))
        assert first.error is None and tokens["oauth.token"] == before + 1
        app.syncer().run(ann, app.provider_for(ann))
        assert tokens["oauth.token"] == before + 1  # the same token, still valid
        team.google.expire_access_tokens(REPS[0])
        again = app.syncer().run(ann, app.provider_for(ann))
        assert again.error is None and tokens["oauth.token"] == before + 2
    finally:
        app.close()


def test_a_domain_wide_mailbox_gets_its_gmail_watch_with_the_delegated_token(team: Team) -> None:
    """Push needs no token of the mailbox's own: its watch is made as its rounds read it."""
    from maillink.push.gmail_watch import GmailWatches

    topic = "projects/acme/topics/maillink"
    team.google.push.create_topic(topic)
    assert team.cli("connect", "gmail", "--domain-wide").code == 0
    app = team.app()
    try:
        result = GmailWatches(app, topic).check()
        assert (result.watched, result.failed) == (len(REPS) + 1, 0)
        for rep in REPS:
            watch = team.google.push.watch_of(rep)
            assert watch is not None and watch.topic == topic
    finally:
        app.close()
