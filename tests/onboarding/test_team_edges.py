"""The edges of a team connection, against the sandboxes through real HTTP: a delegation withdrawn
or an application permission revoked after connecting makes the mailbox need re-authorisation
with the reason, and `maillink accounts refresh` makes it active again once the same credentials
read it; a tenant user without an Exchange Online mailbox is not added."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.auth import jwt

from maillink.app import App
from maillink.cli import main
from maillink.config import load_settings
from maillink.daemon import sync_round
from maillink.http_policy import GRAPH, RULES, TEAM_RULES, Action, Failure, decide
from maillink.onboarding.google_domain import SCOPE_DIRECTORY_USERS, delegated_credentials
from maillink.sandbox.google import SCOPE_METADATA, GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts

SECRET = "sandbox-app-secret"
MS_DOMAIN = "contoso.example"
TEAM = [f"rep{i}@{MS_DOMAIN}" for i in range(4)]
G_DOMAIN = "acme.example"
ADMIN = f"admin@{G_DOMAIN}"
REPS = [f"{name}@{G_DOMAIN}" for name in ("ann", "bob")]


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


def one_round(config: Path) -> dict[str, str | None]:
    app = App(load_settings(config, env={}))
    try:
        return {r.account: r.error for r in sync_round(app)}
    finally:
        app.close()


# -- the policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (403, "ErrorAccessDenied"),  # Mail.ReadBasic.All revoked
        (404, "MailboxNotEnabledForRESTAPI"),  # the user's Exchange Online mailbox is gone
        (None, "unauthorized_client"),  # the app disabled in the tenant (AADSTS7000112)
        (None, "invalid_client"),  # its secret replaced
    ],
)
def test_a_refusal_of_the_apps_credentials_needs_reauth_only_for_team_mailboxes(
    status: int | None, reason: str
) -> None:
    failure = Failure(status, reason)
    assert decide(GRAPH, failure, rules=TEAM_RULES) is Action.REAUTH
    assert decide(GRAPH, failure, rules=RULES) is not Action.REAUTH


def test_a_withdrawn_google_delegation_needs_reauth_in_the_team_policy() -> None:
    assert decide("gmail", Failure(None, "unauthorized_client"), rules=TEAM_RULES) is Action.REAUTH


# -- Google: the assertion, public API only -----------------------------------------------------


def test_the_delegated_assertion_carries_the_claims_google_documents() -> None:
    with GoogleSandbox() as google:
        key = google.workspace.create_service_account()
    credentials = delegated_credentials(key, REPS[0])
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    claims = jwt.decode(credentials.assertion(now), verify=False)
    assert claims == {
        "iss": key["client_email"],
        "scope": SCOPE_METADATA,
        "aud": key["token_uri"],
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + 3600,
        "sub": REPS[0],
    }
    assert jwt.decode_header(credentials.assertion(now))["kid"] == key["private_key_id"]


# -- Google domain-wide -------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[GoogleSandbox, dict[str, Any], Path]]:
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        google.workspace.add_user(ADMIN, admin=True)
        for rep in REPS:
            google.workspace.add_user(rep)
        key = google.workspace.create_service_account()
        google.workspace.delegate(key["client_id"], [SCOPE_METADATA, SCOPE_DIRECTORY_USERS])
        config = write_workspace(tmp_path, google, pipedrive, internal_domains=[G_DOMAIN])
        gmail = (
            f"[gmail]\ndomain_wide_admin = {json.dumps(ADMIN)}\n"
            f"directory_endpoint = {json.dumps(google.directory_endpoint)}\n"
        )
        config.write_text(config.read_text().replace("[gmail]\n", gmail, 1))
        credentials = json.loads((tmp_path / "credentials.json").read_text())
        credentials["google_service_account"] = key
        (tmp_path / "credentials.json").write_text(json.dumps(credentials))
        yield google, key, config


def test_a_withdrawn_delegation_needs_reauth_and_refresh_resumes_once_it_is_back(
    workspace: tuple[GoogleSandbox, dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    google, key, config = workspace
    assert run(config, "connect", "gmail", "--domain-wide") == 0
    assert one_round(config) == {ADMIN: None, REPS[0]: None, REPS[1]: None}

    # The admin keeps the directory scope but withdraws gmail.metadata.
    google.workspace.delegate(key["client_id"], [SCOPE_DIRECTORY_USERS])
    errors = one_round(config)
    assert all(error and "unauthorized_client" in error for error in errors.values())
    ann = mailboxes(config)[REPS[0]]
    assert ann.status == accounts.NEEDS_REAUTH
    assert ann.last_error is not None and "unauthorized_client" in ann.last_error
    assert ann.last_error.endswith("then run maillink accounts refresh")  # not "reconnect"

    capsys.readouterr()
    assert run(config, "accounts", "refresh") == 0  # the listing works: the mail does not
    assert "0 resumed" in capsys.readouterr().out
    ann = mailboxes(config)[REPS[0]]
    assert ann.status == accounts.NEEDS_REAUTH
    assert ann.last_error is not None and "delegation is not granted" in ann.last_error
    assert SCOPE_METADATA in ann.last_error

    google.workspace.delegate(key["client_id"], [SCOPE_METADATA, SCOPE_DIRECTORY_USERS])
    assert run(config, "accounts", "refresh") == 0
    assert f"resumed {REPS[0]}" in capsys.readouterr().out
    assert {a.status for a in mailboxes(config).values()} == {accounts.ACTIVE}
    assert one_round(config) == {ADMIN: None, REPS[0]: None, REPS[1]: None}


# -- Microsoft tenant-wide ----------------------------------------------------------------------


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox(client_secret=SECRET) as sandbox:
        for email in TEAM:
            sandbox.add_mailbox(email)
        sandbox.grant_app_permissions("Mail.ReadBasic.All", "User.Read.All")
        yield sandbox


@pytest.fixture
def tenant(tmp_path: Path, ms: MicrosoftSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        config = write_workspace(
            tmp_path, google, pipedrive, microsoft=ms, internal_domains=[MS_DOMAIN]
        )
        credentials = tmp_path / "credentials.json"
        data = json.loads(credentials.read_text())
        data["microsoft"]["client_secret"] = SECRET
        credentials.write_text(json.dumps(data))
        yield config


def test_a_revoked_mail_permission_needs_reauth_and_refresh_resumes_once_granted(
    ms: MicrosoftSandbox, tenant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tenant, "connect", "microsoft", "--tenant-wide") == 0
    assert one_round(tenant) == dict.fromkeys(TEAM)

    ms.revoke_app_permissions("Mail.ReadBasic.All")
    errors = one_round(tenant)
    assert set(errors) == set(TEAM)
    assert all(error and "ErrorAccessDenied" in error for error in errors.values())
    found = mailboxes(tenant)
    assert {a.status for a in found.values()} == {accounts.NEEDS_REAUTH}

    capsys.readouterr()
    assert run(tenant, "accounts", "refresh") == 0  # listing users still works
    assert "0 resumed" in capsys.readouterr().out
    rep = mailboxes(tenant)[TEAM[0]]
    assert rep.status == accounts.NEEDS_REAUTH
    assert rep.last_error is not None and "Mail.ReadBasic.All" in rep.last_error

    ms.grant_app_permissions("Mail.ReadBasic.All")
    assert run(tenant, "accounts", "refresh") == 0
    assert f"{len(TEAM)} resumed" in capsys.readouterr().out
    assert {a.status for a in mailboxes(tenant).values()} == {accounts.ACTIVE}
    assert one_round(tenant) == dict.fromkeys(TEAM)


def test_an_app_disabled_in_the_tenant_needs_reauth_with_the_aadsts_code(
    ms: MicrosoftSandbox, tenant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tenant, "connect", "microsoft", "--tenant-wide") == 0
    ms.disable_app()
    errors = one_round(tenant)
    assert all(error and "AADSTS7000112" in error for error in errors.values())
    rep = mailboxes(tenant)[TEAM[1]]
    assert rep.status == accounts.NEEDS_REAUTH
    assert rep.last_error is not None and "accounts refresh" in rep.last_error

    capsys.readouterr()
    assert run(tenant, "accounts", "refresh") == 1  # the listing is refused too: one line
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "AADSTS7000112" in err

    ms.disable_app(False)
    assert run(tenant, "accounts", "refresh") == 0
    assert {a.status for a in mailboxes(tenant).values()} == {accounts.ACTIVE}
    assert one_round(tenant) == dict.fromkeys(TEAM)


def test_the_sandbox_models_a_user_with_mail_but_no_exchange_mailbox(ms: MicrosoftSandbox) -> None:
    import requests

    ms.set_exchange_mailbox(TEAM[0], False)
    token = ms.access_token(TEAM[0])
    answer = requests.get(
        f"{ms.graph_url}/me/mailFolders/inbox/messages",
        headers={"Authorization": f"Bearer {token}"},
        verify=ms.ca_bundle,
        timeout=30,
    )
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "MailboxNotEnabledForRESTAPI"
    me = requests.get(
        f"{ms.graph_url}/me",
        headers={"Authorization": f"Bearer {token}"},
        verify=ms.ca_bundle,
        timeout=30,
    )
    assert me.status_code == 200 and me.json()["mail"] == TEAM[0]


def test_a_user_without_an_exchange_mailbox_is_not_added_until_it_has_one(
    ms: MicrosoftSandbox, tenant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ms.set_exchange_mailbox(TEAM[0], False)
    assert run(tenant, "connect", "microsoft", "--tenant-wide") == 0
    out = capsys.readouterr().out
    assert "3 added, 0 paused, 0 resumed, 0 unchanged, 1 not added (no mailbox to read)" in out
    assert sorted(mailboxes(tenant)) == TEAM[1:]
    assert one_round(tenant) == dict.fromkeys(TEAM[1:])

    assert run(tenant, "accounts", "refresh") == 0  # still none: still not added
    assert TEAM[0] not in mailboxes(tenant)

    ms.set_exchange_mailbox(TEAM[0], True)  # a licence with Exchange Online
    assert run(tenant, "accounts", "refresh") == 0
    assert f"added {TEAM[0]}" in capsys.readouterr().out
    assert mailboxes(tenant)[TEAM[0]].status == accounts.ACTIVE


def test_a_mailbox_that_loses_its_exchange_mailbox_needs_reauth_with_that_reason(
    ms: MicrosoftSandbox, tenant: Path
) -> None:
    assert run(tenant, "connect", "microsoft", "--tenant-wide") == 0
    ms.set_exchange_mailbox(TEAM[2], False)
    errors = one_round(tenant)
    assert errors[TEAM[2]] is not None and "MailboxNotEnabledForRESTAPI" in errors[TEAM[2]]
    assert [e for e in TEAM if errors[e] is not None] == [TEAM[2]]

    assert run(tenant, "accounts", "refresh") == 0
    lost = mailboxes(tenant)[TEAM[2]]
    assert lost.status == accounts.NEEDS_REAUTH
    assert lost.last_error is not None and "no Exchange Online mailbox" in lost.last_error


# -- the example configuration ------------------------------------------------------------------

TEAM_KEYS = ("domain_wide_admin", "domain", "members", "directory_endpoint", "members_group")


def test_the_examples_commented_team_keys_are_valid_when_uncommented(tmp_path: Path) -> None:
    example = (Path(__file__).parents[2] / "maillink.example.toml").read_text()
    lines = []
    for line in example.splitlines():
        name = line.removeprefix("# ").split(" = ")[0]
        lines.append(line.removeprefix("# ") if name in TEAM_KEYS and " = " in line else line)
    assert sum(line.split(" = ")[0] in TEAM_KEYS for line in lines) == len(TEAM_KEYS)
    path = tmp_path / "maillink.toml"
    path.write_text("\n".join(lines) + "\n")

    settings = load_settings(path, env={})
    gmail = settings.gmail
    assert (gmail.domain_wide_admin, gmail.domain) == ("admin@yourcompany.com", "yourcompany.com")
    assert gmail.members == ("rep@yourcompany.com",)
    assert gmail.directory_endpoint == "https://admin.googleapis.com"
    assert settings.microsoft.members_group == "Sales"
