"""`maillink connect microsoft --tenant-wide` against the Microsoft sandbox, through MSAL's client
credentials and real HTTP: 20 members of a group connected with one consent, their rounds read
`/users/{id}/…` with the app's token, a member who leaves the group is paused on
`maillink accounts refresh` and resumed when back; a missing permission is one line, exit 1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maillink.app import App
from maillink.cli import main
from maillink.config import load_settings
from maillink.daemon import Daemon, sync_round
from maillink.onboarding.team import LEFT_DIRECTORY
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts

DOMAIN = "contoso.example"
SECRET = "sandbox-app-secret"
TEAM = [f"rep{i:02d}@{DOMAIN}" for i in range(20)]
OUTSIDERS = [f"ops{i}@{DOMAIN}" for i in range(2)]
APP_PERMISSIONS = ("Mail.ReadBasic.All", "User.Read.All", "GroupMember.Read.All")


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox(client_secret=SECRET) as sandbox:
        for email in TEAM + OUTSIDERS:
            sandbox.add_mailbox(email)
        sandbox.grant_app_permissions(*APP_PERMISSIONS)
        yield sandbox


@pytest.fixture
def sales(ms: MicrosoftSandbox) -> str:
    return ms.add_group("Sales", TEAM)


@pytest.fixture
def config(tmp_path: Path, ms: MicrosoftSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)  # the sandbox's throwaway CA
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        path = write_workspace(tmp_path, google, pipedrive, microsoft=ms, internal_domains=[DOMAIN])
        text = path.read_text().replace("[microsoft]\n", '[microsoft]\nmembers_group = "Sales"\n')
        path.write_text(text)
        credentials = tmp_path / "credentials.json"
        data = json.loads(credentials.read_text())
        data["microsoft"]["client_secret"] = SECRET
        credentials.write_text(json.dumps(data))
        yield path


def run(config: Path, *args: str) -> int:
    try:
        main(["--config", str(config), *args])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def mailboxes(config: Path) -> dict[str, accounts.Account]:
    app = App(load_settings(config, env={}))
    try:
        return {a.email: a for a in app.store_accounts(active_only=False)}
    finally:
        app.close()


def test_a_group_is_connected_and_synced_with_the_app_token(
    ms: MicrosoftSandbox, sales: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    when = datetime.now(UTC) - timedelta(hours=1)
    for i, email in enumerate(TEAM):
        ms.add_message(
            email,
            "inbox",
            internet_message_id=f"<m{i}@client.example>",
            subject=f"Quote {i}",
            sender=("Ana", "ana@client.example"),
            to=[email],
            received=when,
        )
    assert run(config, "connect", "microsoft", "--tenant-wide") == 0
    out = capsys.readouterr().out
    assert "microsoft tenant-wide: 20 added, 0 paused, 0 resumed, 0 unchanged" in out
    found = mailboxes(config)
    assert sorted(found) == TEAM  # the two outside the group are not connected
    rep = found[TEAM[0]]
    assert (rep.connected_via, rep.token, rep.directory_id) == ("tenant", None, ms.user_id(TEAM[0]))

    app = App(load_settings(config, env={}))
    try:
        results = sync_round(app)
    finally:
        app.close()
    assert {r.account: (r.error, r.messages) for r in results} == {e: (None, 1) for e in TEAM}
    assert ms.meter.requests["identity.token"] == 1  # one app token for every mailbox
    assert all(path.startswith("users/") for _t, path in ms.request_log(TEAM[0]))

    assert run(config, "accounts", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["connected_via"] for r in listed} == {"tenant"}


def test_a_member_who_leaves_the_group_is_paused_and_resumed_when_back(
    ms: MicrosoftSandbox, sales: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "connect", "microsoft", "--tenant-wide") == 0
    ms.remove_group_member(sales, TEAM[3])
    ms.add_group_member(sales, OUTSIDERS[0])
    capsys.readouterr()
    assert run(config, "accounts", "refresh") == 0
    out = capsys.readouterr().out
    assert "1 added, 1 paused, 0 resumed, 19 unchanged" in out
    assert f"paused {TEAM[3]}" in out and f"added {OUTSIDERS[0]}" in out
    left = mailboxes(config)[TEAM[3]]
    assert (left.status, left.last_error) == (accounts.PAUSED, LEFT_DIRECTORY)

    ms.add_group_member(sales, TEAM[3])
    assert run(config, "accounts", "refresh") == 0
    assert f"resumed {TEAM[3]}" in capsys.readouterr().out
    assert mailboxes(config)[TEAM[3]].status == accounts.ACTIVE


def test_a_missing_group_permission_is_one_line_and_exit_1(
    ms: MicrosoftSandbox, sales: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ms.revoke_app_permissions("GroupMember.Read.All")
    assert run(config, "connect", "microsoft", "--tenant-wide") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GroupMember.Read.All" in err
    assert mailboxes(config) == {}


def test_a_missing_mail_permission_is_one_line_and_exit_1(
    ms: MicrosoftSandbox, sales: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ms.revoke_app_permissions("Mail.ReadBasic.All")
    assert run(config, "connect", "microsoft", "--tenant-wide") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Mail.ReadBasic.All" in err


def test_a_wrong_secret_is_one_line(
    ms: MicrosoftSandbox, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials = config.parent / "credentials.json"
    data = json.loads(credentials.read_text())
    data["microsoft"]["client_secret"] = "wrong"
    credentials.write_text(json.dumps(data))
    assert run(config, "connect", "microsoft", "--tenant-wide") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "AADSTS7000215" in err


def test_without_a_client_secret_the_tenant_wide_connection_is_refused(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials = config.parent / "credentials.json"
    data = json.loads(credentials.read_text())
    del data["microsoft"]["client_secret"]
    credentials.write_text(json.dumps(data))
    assert run(config, "connect", "microsoft", "--tenant-wide") == 2
    assert "client_secret" in capsys.readouterr().err


def test_a_multi_tenant_authority_is_refused(
    config: Path, ms: MicrosoftSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    text = config.read_text().replace(ms.authority, ms.authority.rsplit("/", 1)[0] + "/common")
    config.write_text(text)
    assert run(config, "connect", "microsoft", "--tenant-wide") == 2
    assert "tenant" in capsys.readouterr().err


def test_the_daemon_refresh_pauses_a_member_who_left(
    ms: MicrosoftSandbox, sales: str, config: Path
) -> None:
    assert run(config, "connect", "microsoft", "--tenant-wide") == 0
    ms.remove_group_member(sales, TEAM[5])
    app = App(load_settings(config, env={}))
    try:
        Daemon(app, should_stop=threading.Event().is_set, workers=1)._refresh_teams()
    finally:
        app.close()
    assert mailboxes(config)[TEAM[5]].status == accounts.PAUSED
