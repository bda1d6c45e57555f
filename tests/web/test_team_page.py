"""The admins' Team page through the Flask app, against the Microsoft sandbox's tenant (client
credentials, a group) and Google's Workspace (a service account's delegation), over real HTTP:
an admin sees each team connection and runs "Connect / refresh members" (newcomers added, a
leaver paused, a failure in the command line's one line); a rep is refused (403) on the page and
on the form; a form without its CSRF token is refused; no secret is ever on the page."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from tests.web.support import PUBLIC_URL, csrf, sign_in, text

from maillink.app import App
from maillink.cli import main
from maillink.config import load_settings
from maillink.onboarding.google_domain import SCOPE_DIRECTORY_USERS
from maillink.onboarding.team import LEFT_DIRECTORY, Member, TeamConnection
from maillink.sandbox.google import SCOPE_METADATA, GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts
from maillink.web.factory import create_app
from maillink.web.jobs import TeamJob
from maillink.web.settings import WebSettings
from maillink.web.team import TEAM_JOBS

TENANT_DOMAIN = "contoso.example"
SECRET = "sandbox-app-secret-never-shown"
SALES = [f"rep{i}@{TENANT_DOMAIN}" for i in range(3)]
OUTSIDER = f"ops@{TENANT_DOMAIN}"
WORKSPACE = "acme.example"
GOOGLE_ADMIN = f"admin@{WORKSPACE}"
REPS = [f"{name}@{WORKSPACE}" for name in ("ann", "bob")]
BOSS = "boss@example.org"  # the web app's admin
REP = "rep-user@example.org"  # a web user who is no admin


@dataclass
class Site:
    folder: Path
    config: Path
    app: App
    web: Flask
    ms: MicrosoftSandbox
    google: GoogleSandbox
    key: dict[str, object]
    sales: str  # the Microsoft group's id

    def wait(self, via: str) -> TeamJob:
        job = self.web.extensions[TEAM_JOBS].wait(via)
        assert job is not None and not job.running, job
        return job


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """Both team connections configured: Microsoft's group "Sales" and Google's directory."""
    with (
        MicrosoftSandbox(client_secret=SECRET) as ms,
        GoogleSandbox() as google,
        PipedriveSandbox() as pipedrive,
    ):
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)  # the sandbox's throwaway CA
        for email in [*SALES, OUTSIDER]:
            ms.add_mailbox(email)
        ms.grant_app_permissions("Mail.ReadBasic.All", "User.Read.All", "GroupMember.Read.All")
        sales = ms.add_group("Sales", SALES)
        google.workspace.add_user(GOOGLE_ADMIN, admin=True)
        for rep in REPS:
            google.workspace.add_user(rep)
        key = google.workspace.create_service_account()
        google.workspace.delegate(key["client_id"], [SCOPE_METADATA, SCOPE_DIRECTORY_USERS])
        config = write_workspace(
            tmp_path, google, pipedrive, microsoft=ms, internal_domains=[WORKSPACE]
        )
        written = config.read_text()
        written = written.replace("[microsoft]\n", '[microsoft]\nmembers_group = "Sales"\n')
        written = written.replace(
            "[gmail]\n",
            f"[gmail]\ndomain_wide_admin = {json.dumps(GOOGLE_ADMIN)}\n"
            f"directory_endpoint = {json.dumps(google.directory_endpoint)}\n",
        )
        config.write_text(written)
        (tmp_path / "sa-key.json").write_text(json.dumps(key))
        credentials = json.loads((tmp_path / "credentials.json").read_text())
        credentials["microsoft"]["client_secret"] = SECRET
        credentials["google_service_account_file"] = "sa-key.json"
        (tmp_path / "credentials.json").write_text(json.dumps(credentials))
        app = App(load_settings(config, env={}))
        web = create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL), testing=True)
        try:
            yield Site(tmp_path, config, app, web, ms, google, key, sales)
        finally:
            web.extensions[TEAM_JOBS].stop()
            web.extensions["maillink"].jobs.stop()
            app.close()


def _statuses(app: App) -> dict[str, tuple[str, str]]:
    return {a.email: (a.status, a.connected_via) for a in app.store_accounts(active_only=False)}


def _refresh(client: FlaskClient, via: str) -> None:
    answer = client.post(f"/team/{via}/refresh", data={"csrf_token": csrf(client, "/team")})
    assert answer.status_code == 303, text(answer)
    assert answer.headers["Location"].endswith(f"/team#{via}")


def _cli_error(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The line `maillink accounts refresh` prints for the failed connection."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), "accounts", "refresh"])
    assert exit_.value.code == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    return line.removeprefix("maillink: error: ")


def test_an_admin_sees_the_team_connections_and_no_secret(site: Site) -> None:
    admin = sign_in(site.web, site.app, BOSS, admin=True)
    page = text(admin.get("/team"))
    assert "microsoft tenant-wide" in page and "google domain-wide" in page
    assert html.escape("group “Sales”") in page and GOOGLE_ADMIN in page
    assert page.count(">Connect / refresh members</button>") == 2
    assert 'href="/team"' in text(admin.get("/mailboxes"))  # the admins' nav link
    for secret in (
        SECRET,
        str(site.key["private_key"]).splitlines()[1],
        site.key["private_key_id"],
    ):
        assert str(secret) not in page


def test_an_admin_connects_and_refreshes_the_microsoft_group(site: Site) -> None:
    admin = sign_in(site.web, site.app, BOSS, admin=True)
    _refresh(admin, "tenant")
    job = site.wait("tenant")
    assert job.error is None and job.report is not None and job.report.added == SALES
    assert job.started_by == BOSS
    page = text(admin.get("/team"))
    assert "microsoft tenant-wide: 3 added, 0 paused, 0 resumed, 0 unchanged" in page
    assert 'http-equiv="refresh"' not in page  # done: the page stops reloading itself
    statuses = _statuses(site.app)
    assert {statuses[e] for e in SALES} == {(accounts.ACTIVE, "tenant")}
    assert OUTSIDER not in statuses
    for email in SALES:
        assert email in page
    assert page.count("<td>tenant</td>") == 3  # connected_via of each mailbox

    site.ms.remove_group_member(site.sales, SALES[0])  # one leaves the group, one joins
    site.ms.add_group_member(site.sales, OUTSIDER)
    _refresh(admin, "tenant")
    job = site.wait("tenant")
    assert job.report is not None
    assert (job.report.added, job.report.paused) == ([OUTSIDER], [SALES[0]])
    left = site.app.store_accounts(active_only=False)
    paused = {a.email: (a.status, a.last_error) for a in left}[SALES[0]]
    assert paused == (accounts.PAUSED, LEFT_DIRECTORY)
    page = text(admin.get("/team"))
    assert "1 added, 1 paused, 0 resumed, 2 unchanged" in page
    assert f"paused {SALES[0]}" in page and f"added {OUTSIDER}" in page
    assert html.escape(LEFT_DIRECTORY) in page


def test_an_admin_connects_and_refreshes_the_google_workspace(site: Site) -> None:
    admin = sign_in(site.web, site.app, BOSS, admin=True)
    _refresh(admin, "domain")
    job = site.wait("domain")
    assert job.error is None and job.report is not None
    assert job.report.added == sorted([GOOGLE_ADMIN, *REPS])
    assert {_statuses(site.app)[e] for e in REPS} == {(accounts.ACTIVE, "domain")}

    site.google.workspace.remove_user(REPS[0])
    _refresh(admin, "domain")
    job = site.wait("domain")
    assert job.report is not None and job.report.paused == [REPS[0]]
    assert _statuses(site.app)[REPS[0]] == (accounts.PAUSED, "domain")
    page = text(admin.get("/team"))
    assert "google domain-wide: 0 added, 1 paused, 0 resumed, 2 unchanged" in page
    assert page.count("<td>domain</td>") == 3


def test_a_failure_is_the_command_line_s_one_line(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.ms.revoke_app_permissions("GroupMember.Read.All")
    admin = sign_in(site.web, site.app, BOSS, admin=True)
    _refresh(admin, "tenant")
    job = site.wait("tenant")
    assert job.report is None and job.error is not None
    assert "GroupMember.Read.All" in job.error and "\n" not in job.error
    assert job.error == _cli_error(site.config, capsys)
    assert html.escape(job.error) in text(admin.get("/team"))
    assert {via for _status, via in _statuses(site.app).values()} <= {"domain"}  # the CLI's


def test_a_rep_is_refused_the_page_and_the_form(site: Site) -> None:
    rep = sign_in(site.web, site.app, REP)
    page = rep.get("/team")
    assert page.status_code == 403
    assert "Only admins" in text(page) and SECRET not in text(page)
    assert 'href="/team"' not in text(rep.get("/mailboxes"))
    answer = rep.post("/team/tenant/refresh", data={"csrf_token": csrf(rep)})
    assert answer.status_code == 403
    assert site.web.extensions[TEAM_JOBS].get("tenant") is None
    assert site.ms.meter.requests["identity.token"] == 0  # nothing was asked of Microsoft


def test_a_form_without_its_csrf_token_is_refused(site: Site) -> None:
    admin = sign_in(site.web, site.app, BOSS, admin=True)
    answer = admin.post("/team/tenant/refresh", data={})
    assert answer.status_code == 400
    assert "CSRF" in text(answer)
    forged = admin.post("/team/tenant/refresh", data={"csrf_token": "forged"})
    assert forged.status_code == 400
    assert site.web.extensions[TEAM_JOBS].get("tenant") is None


def test_signed_out_the_page_sends_to_sign_in_and_the_form_is_refused(site: Site) -> None:
    client = site.web.test_client()
    page = client.get("/team")
    assert page.status_code == 303 and "/signin" in page.headers["Location"]
    token = csrf(client, "/signin")
    assert client.post("/team/tenant/refresh", data={"csrf_token": token}).status_code == 401


def test_an_unknown_or_unconfigured_connection_is_not_found(site: Site) -> None:
    admin = sign_in(site.web, site.app, BOSS, admin=True)
    answer = admin.post("/team/elsewhere/refresh", data={"csrf_token": csrf(admin, "/team")})
    assert answer.status_code == 404


def test_while_a_refresh_runs_the_page_reloads_itself_and_starts_no_second_one(
    site: Site,
) -> None:
    release = threading.Event()
    listed: list[int] = []

    def members() -> list[Member]:
        listed.append(1)
        release.wait(30)
        return [Member(SALES[0], None)]

    jobs = site.web.extensions[TEAM_JOBS]
    jobs.start(TeamConnection("microsoft tenant-wide", "microsoft", "tenant", members), BOSS)
    admin = sign_in(site.web, site.app, BOSS, admin=True)
    try:
        page = text(admin.get("/team"))
        assert 'http-equiv="refresh"' in page and "Listing the members" in page
        _refresh(admin, "tenant")  # the same connection: the running refresh is the one shown
    finally:
        release.set()
    job = site.wait("tenant")
    assert job.report is not None and job.report.added == [SALES[0]] and listed == [1]
