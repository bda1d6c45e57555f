"""Every command of docs/cli.md as a user runs it: a subprocess, real files, the sandboxes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from tests.e2e.conftest import Ran
from tests.e2e.support import CRMS, NOW, REP, CrmSandbox, both_crms, follow_printed_url

from maillink.sandbox.google import GoogleSandbox

ANN = "ann@customer.example"
Cli = Callable[..., Ran]


def _one_line_error(ran: Ran) -> str:
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert len(lines) == 1, ran.err
    assert "Traceback" not in ran.err
    return lines[0]


def _seed(google: GoogleSandbox, crm: CrmSandbox) -> dict[str, int | str]:
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    lead = crm.add_lead("Upsell", ann, add_time=NOW - timedelta(days=30))
    first = None
    for i in range(3):
        date = NOW - timedelta(days=3 - i)
        frm, to = (ANN, REP) if i % 2 == 0 else (REP, ANN)
        headers = [
            ("From", frm),
            ("To", to),
            ("Subject", "Quote"),
            ("Date", format_datetime(date)),
            ("Message-ID", f"<cli-{i}@mail.example>"),
        ]
        labels = ("SENT",) if frm == REP else ("INBOX",)
        added = google.add_message(
            REP, headers=headers, internal_date=date, thread_id=first, label_ids=labels
        )
        first = first or added
    return {"deal": deal, "lead": lead}


def _connect(config: Path, google: GoogleSandbox) -> subprocess.CompletedProcess[str]:
    google.consent_as = REP
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "maillink", "connect", "gmail", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = follow_printed_url(process)
    out, err = process.communicate(timeout=60)
    assert "code_challenge_method=S256" in url and "state=" in url
    assert "gmail.metadata" in url
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@both_crms
def test_connect_then_backfill_pending_choose_explain_and_sync(
    cli: Cli, config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    google.add_mailbox(REP)
    items = _seed(google, crm)
    connected = _connect(config, google)
    assert connected.returncode == 0, connected.stderr
    assert f"connected {REP}" in connected.stdout

    accounts = cli("accounts", "--json")
    assert accounts.code == 0
    assert [(a["email"], a["status"]) for a in json.loads(accounts.out)] == [(REP, "active")]

    dry = cli("backfill", "--dry-run")
    assert dry.code == 0, dry.err
    assert "dry run" in dry.out and "multiple_open_items 3" in dry.out
    assert crm.emails() == []

    done = cli("backfill", "--account", REP, "--since", "2020-01-01")
    assert done.code == 0, done.err
    assert len(crm.emails()) == 3

    waiting = json.loads(cli("pending", "--json").out)
    assert len(waiting) == 1
    thread = waiting[0]["thread"]
    assert {c["item"] for c in waiting[0]["candidates"]} == {
        f"deal:{items['deal']}",
        f"lead:{items['lead']}",
    }
    assert "choose with: maillink choose" in cli("pending").out

    chosen = cli("choose", str(thread), f"deal:{items['deal']}")
    assert chosen.code == 0, chosen.err
    assert {e.items for e in crm.emails()} == {frozenset({f"deal:{items['deal']}"})}

    explained = json.loads(cli("explain", str(thread), "--json").out)
    assert explained["linked"] == f"deal:{items['deal']}"
    assert [m["reason"] for m in explained["messages"]] == ["user_choice"] * 3
    assert [h["reason"] for h in explained["messages"][0]["history"]] == [
        "multiple_open_items",
        "user_choice",
    ]
    by_message_id = cli("explain", "<cli-1@mail.example>")
    assert by_message_id.code == 0 and "user_choice" in by_message_id.out

    again = cli("sync", "--once")
    assert again.code == 0, again.err
    assert len(crm.emails()) == 3  # nothing written twice


def test_a_denied_consent_is_one_line_without_a_class_name_and_exit_1(
    config: Path, google: GoogleSandbox
) -> None:
    google.add_mailbox(REP)
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    google.consent_as = None  # the user clicks "Cancel" on Google's consent page
    process = subprocess.Popen(
        [sys.executable, "-m", "maillink", "connect", "gmail", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    follow_printed_url(process)
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # after the "Open this address…" prompt
    assert process.returncode == 1
    assert line.startswith("maillink: error: ") and "access_denied" in line
    assert "ConnectError" not in line and "--debug" not in line


@both_crms
def test_pause_resume_and_remove_a_mailbox(
    cli: Cli, config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    google.add_mailbox(REP)
    assert _connect(config, google).returncode == 0
    _seed(google, crm)
    assert cli("accounts", "pause", REP).code == 0
    assert json.loads(cli("accounts", "--json").out)[0]["status"] == "paused"
    assert "no active mailbox" in cli("backfill").out
    assert crm.emails() == []  # a paused mailbox writes nothing to the CRM
    assert cli("accounts", "resume", REP).code == 0
    assert REP in cli("accounts").out
    resumed = cli("backfill")
    assert resumed.code == 0, resumed.err
    assert len(crm.emails()) == 3
    assert cli("accounts", "remove", REP).code == 0
    assert json.loads(cli("accounts", "--json").out) == []
    assert cli("sync", "--once").code == 0
    assert len(crm.emails()) == 3  # what was written stays; nothing more is


@both_crms
def test_keys_rotate_reencrypts_and_the_mailbox_still_syncs(
    cli: Cli, config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    google.add_mailbox(REP)
    _seed(google, crm)
    assert _connect(config, google).returncode == 0
    credentials = config.parent / "credentials.json"
    data = json.loads(credentials.read_text())
    new_key = cli("keys", "generate").out.strip()
    data["encryption_key"] = [new_key, data["encryption_key"]]
    credentials.write_text(json.dumps(data))
    rotated = cli("keys", "rotate")
    assert rotated.code == 0 and "re-encrypted 1" in rotated.out

    data["encryption_key"] = new_key  # the old key is gone: the rotated token still decrypts
    credentials.write_text(json.dumps(data))
    assert cli("backfill").code == 0
    assert len(crm.emails()) == 3

    data["encryption_key"] = cli("keys", "generate").out.strip()  # a wrong key
    credentials.write_text(json.dumps(data))
    before = json.loads(cli("accounts", "--json").out)
    wrong = cli("sync", "--once")
    assert wrong.code == 2
    assert "cannot be decrypted" in _one_line_error(wrong)
    assert json.loads(cli("accounts", "--json").out) == before  # nothing written


@both_crms
def test_configuration_mistakes_are_one_line_and_exit_2(
    cli: Cli, config: Path, tmp_path: Path, crm: CrmSandbox
) -> None:
    missing = cli("--config", str(tmp_path / "nope.toml"), "accounts")
    assert missing.code == 2
    assert "nope.toml" in _one_line_error(missing)

    credentials = config.parent / "credentials.json"
    good = credentials.read_text()
    credentials.write_text("{not json")
    broken = cli("backfill")
    assert broken.code == 2
    assert "credentials.json" in _one_line_error(broken)
    credentials.write_text(good)

    unknown = cli("backfill", "--account", "nobody@acme.example")
    assert unknown.code == 2
    assert "nobody@acme.example" in _one_line_error(unknown)

    kind = f'kind = "{crm.kind}"'
    assert kind in config.read_text()
    config.write_text(config.read_text().replace(kind, f"{kind}\ntypo = 1"))
    typo = cli("accounts")
    assert typo.code == 2 and "typo" in _one_line_error(typo)


def test_usage_mistakes_exit_2(cli: Cli) -> None:
    assert cli("sync").code == 2
    assert cli("choose", "1", "dealio:4").code == 2
    assert cli("backfill", "--since", "last tuesday").code == 2
    assert cli("no-such-command").code == 2


@pytest.mark.parametrize("crm", ["pipedrive", "hubspot"])
def test_demo_runs_the_whole_pipeline_and_shows_every_reason(tmp_path: Path, crm: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maillink", "demo", "--messages", "300", "--crm", crm],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for reason in (
        "linked_thread_item",
        "single_open_item",
        "multiple_open_items",
        "no_open_items",
        "item_created_after_thread",
        "item_closed_before_message",
        "no_known_contact",
        "internal_only",
        "blocked",
    ):
        assert f"  {reason} " in done.stdout, reason
    assert "sync --once again: 0 new messages, 0 activities created" in done.stdout
    assert "outbox pending: 0" in done.stdout
    if crm == "hubspot":  # HubSpot's cost is its requests; Pipedrive's its API tokens
        assert "HubSpot at http://127.0.0.1:" in done.stdout
        assert re.search(r"HubSpot \d+ requests, [\d.]+ requests per message", done.stdout)
        assert re.search(r"HubSpot now holds [1-9]\d* email engagements", done.stdout)
        assert "Pipedrive" not in done.stdout and "token" not in done.stdout
    else:
        assert re.search(r"Pipedrive \d+ requests, [\d.]+ API tokens per message", done.stdout)
        assert re.search(r"Pipedrive now holds [1-9]\d* activities", done.stdout)
        assert "HubSpot" not in done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    # the demo grants each consent itself: it says so, and no prompt is left without its address
    assert done.stdout.count(": the demo grants the consent itself") == 3
    for stream in (done.stdout, done.stderr):
        lines = stream.splitlines() + [""]
        dangling = [
            line
            for line, after in zip(lines, lines[1:], strict=False)
            if line.endswith(":") and not after.startswith(("  ", "http"))
        ]
        assert dangling == [], dangling


def test_the_demo_decides_the_same_mail_the_same_way_on_both_crms() -> None:
    """The same generated team, loaded into either CRM: the same outcomes, reason by reason."""
    from maillink.demo import run_demo

    reports = [run_demo(messages=150, seed=3, crm=crm, out=lambda _: None) for crm in CRMS]
    assert reports[0]["reasons"] == reports[1]["reasons"]
    assert reports[0]["activities"] == reports[1]["activities"] > 0
    assert reports[0]["waiting"] == reports[1]["waiting"]


@both_crms
def test_backfill_stopped_by_ctrl_c_resumes_where_it_stopped(
    cli: Cli, config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    import signal
    import sqlite3
    import time

    from maillink.sandbox._server import Fault

    config.write_text(config.read_text() + "\n[sync]\npage_size = 40\n")
    google.add_mailbox(REP)
    ann = crm.add_person("Ann", [ANN])
    deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=90))
    for i in range(240):
        date = NOW - timedelta(hours=240 - i)
        headers = [("From", ANN), ("To", REP), ("Subject", f"n{i}"), ("Message-ID", f"<n{i}@x>")]
        google.add_message(REP, headers=headers, internal_date=date)
    assert _connect(config, google).returncode == 0
    google.faults.add(Fault(path="^/batch/gmail/v1", action="delay", seconds=0.4, times=100))

    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "maillink", "backfill"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    database = config.parent / "maillink.db"

    def stored() -> int:
        with sqlite3.connect(database) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    deadline = time.monotonic() + 60
    while stored() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "stopped; run the same command again to resume" in out
    halfway = stored()
    assert 0 < halfway < 240

    google.faults.clear()
    resumed = cli("backfill")
    assert resumed.code == 0, resumed.err
    assert f"{240 - halfway} new messages" in resumed.out  # only what was left
    assert stored() == 240
    emails = crm.emails()
    assert len(emails) == 240
    assert sorted(e.key for e in emails) == sorted(f"n{i}@x" for i in range(240))  # once each
    assert {e.items for e in emails} == {frozenset({f"deal:{deal}"})}


@both_crms
def test_connect_microsoft_no_browser_then_backfill_through_graph(
    tmp_path: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    from maillink.sandbox.browser import consent
    from maillink.sandbox.microsoft import MicrosoftSandbox
    from maillink.sandbox.workspace import write_workspace

    carol = "carol@acme.example"
    with MicrosoftSandbox() as microsoft:
        microsoft.add_mailbox(carol, "Carol")
        microsoft.consent_as = carol
        ann = crm.add_person("Ann", [ANN])
        deal = crm.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
        microsoft.add_message(
            carol,
            "inbox",
            internet_message_id="<graph-1@mail.example>",
            subject="Quote",
            sender=ANN,
            to=[carol],
            received=NOW - timedelta(days=1),
        )
        hubspot = crm.sandbox if crm.kind == "hubspot" else None
        config = write_workspace(
            tmp_path,
            google,
            None if hubspot else crm.sandbox,
            internal_domains=["acme.example"],
            microsoft=microsoft,
            hubspot=hubspot,
        )
        env = dict(os.environ, MAILLINK_CONFIG=str(config), REQUESTS_CA_BUNDLE=microsoft.ca_bundle)
        process = subprocess.Popen(
            [sys.executable, "-m", "maillink", "connect", "microsoft", "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        url = next(line.strip() for line in process.stdout if line.startswith("http"))
        assert "code_challenge_method=S256" in url and "Mail.ReadBasic" in url
        consent(url, verify=microsoft.ca_bundle)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert f"connected {carol} (microsoft)" in out

        done = subprocess.run(
            [sys.executable, "-m", "maillink", "backfill"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        email = crm.email("graph-1@mail.example")
        assert email.items == {f"deal:{deal}"} and email.persons == {ann}


@both_crms
def test_no_token_reaches_the_output_even_with_debug(
    cli: Cli, config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    from maillink.app import App
    from maillink.config import load_settings

    google.add_mailbox(REP)
    _seed(google, crm)
    google.consent_as = REP
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "maillink", "--debug", "connect", "gmail", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    follow_printed_url(process)
    out, err = process.communicate(timeout=60)
    from maillink.sandbox._server import Fault

    # The CRM refuses the token first: the error, told with --debug, names the request only.
    crm.sandbox.faults.add(Fault(path=".", status=401, body='{"message": "bad token"}', times=200))
    refused = cli("--debug", "backfill")
    assert refused.code == 1 and "answered 401 to" in refused.out, refused.out + refused.err
    crm.sandbox.faults.clear()
    synced = cli("--debug", "backfill")
    app = App(load_settings(config))
    tokens = app.tokens(app.account(REP))
    app.close()
    refresh = tokens["refresh_token"]
    assert synced.code == 0, synced.err
    assert len(crm.emails()) == 3  # the backfill did talk to the CRM, with its token
    crm_token = crm.sandbox.access_token if crm.kind == "hubspot" else crm.sandbox.api_token
    secrets = [refresh, crm_token]
    assert all(len(secret) > 10 for secret in secrets)
    for text in (out, err, refused.out, refused.err, synced.out, synced.err):
        for secret in secrets:
            assert secret not in text
    for stored in config.parent.glob("maillink.db*"):  # the database, its WAL and shm files
        for secret in secrets:
            assert secret.encode() not in stored.read_bytes()
