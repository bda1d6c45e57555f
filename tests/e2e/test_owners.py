"""Who owns an email in Pipedrive, end to end: each activity belongs to the Pipedrive user of the
rep whose mailbox the email came from (the sender's, else the first connected recipient's), is
linked to the primary person's organization, and `maillink accounts` names each mailbox's user
or says why it has none. Through `maillink` as a user runs it, against the sandboxes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import Ran
from tests.e2e.support import DOMAIN, NOW, REP, connect

import openapi_check
from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox

ALICE, BOB, CAROL = REP, f"bob@{DOMAIN}", f"carol@{DOMAIN}"  # Carol has no Pipedrive user
XAVIER, YVONNE = "xavier@customer.example", "yvonne@other.example"
Cli = Callable[..., Ran]


class Team:
    """The sandbox company: users for Alice and Bob, Xavier in an organization, Yvonne in none."""

    def __init__(self, pipedrive: PipedriveSandbox):
        self.pipedrive = pipedrive
        self.alice = pipedrive.add_user("Alice Rep", ALICE.upper())  # matched case-insensitively
        self.bob = pipedrive.add_user("Bob Rep", BOB)
        self.former = pipedrive.add_user("Former Rep", f"dan@{DOMAIN}", active=False)
        self.org = pipedrive.add_organization("Customer Ltd")
        self.xavier = pipedrive.add_person("Xavier", [XAVIER], org_id=self.org)
        self.yvonne = pipedrive.add_person("Yvonne", [YVONNE])

    def activity(self, subject: str) -> dict[str, Any]:
        [found] = [a for a in self.pipedrive.activities() if a["subject"] == subject]
        return found


def _mail(
    google: GoogleSandbox,
    mailboxes: tuple[str, ...],
    sender: str,
    to: str,
    subject: str,
    days_ago: int,
) -> None:
    """One email, found in each of `mailboxes` (SENT in the sender's, INBOX in the others)."""
    date = NOW - timedelta(days=days_ago)
    headers = [
        ("From", sender),
        ("To", to),
        ("Subject", subject),
        ("Date", format_datetime(date)),
        ("Message-ID", f"<{subject.replace(' ', '-')}@mail.example>"),
    ]
    for mailbox in mailboxes:
        labels = ("SENT",) if mailbox == sender else ("INBOX",)
        google.add_message(mailbox, headers=headers, internal_date=date, label_ids=labels)


@pytest.fixture
def team(config: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox) -> Team:
    for mailbox in (ALICE, BOB, CAROL):
        google.add_mailbox(mailbox)
    app = App(load_settings(config))
    try:
        for mailbox in (ALICE, BOB, CAROL):
            connect(app, google, mailbox)
    finally:
        app.close()
    return Team(pipedrive)


def _accounts(cli: Cli) -> dict[str, dict[str, Any]]:
    ran = cli("accounts", "--json")
    assert ran.code == 0, ran.err
    return {row["email"]: row for row in json.loads(ran.out)}


def test_each_activity_belongs_to_its_reps_pipedrive_user_and_the_persons_organization(
    cli: Cli, google: GoogleSandbox, pipedrive: PipedriveSandbox, team: Team
) -> None:
    _mail(google, (ALICE,), ALICE, XAVIER, "outbound from Alice", 5)
    _mail(google, (BOB,), XAVIER, BOB, "inbound to Bob", 4)
    # Two connected reps in To: Bob comes first, in both copies; one activity.
    _mail(google, (ALICE, BOB), XAVIER, f"{BOB}, {ALICE}", "inbound to Bob and Alice", 3)
    _mail(google, (CAROL,), CAROL, YVONNE, "outbound from Carol", 2)

    ran = cli("sync", "--once")
    assert ran.code == 0, ran.err

    assert len(pipedrive.activities()) == 4
    owners = {a["subject"]: (a["owner_id"], a["org_id"]) for a in pipedrive.activities()}
    assert owners == {
        "outbound from Alice": (team.alice, team.org),
        "inbound to Bob": (team.bob, team.org),
        "inbound to Bob and Alice": (team.bob, team.org),
        "outbound from Carol": (1, None),  # no Pipedrive user: the token's, as before
    }
    posted = {
        r.body["subject"]: r for r in pipedrive.received if r.operation == "activities.create"
    }
    assert "owner_id" not in posted["outbound from Carol"].body
    assert "org_id" not in posted["outbound from Carol"].body
    for request in posted.values():
        assert openapi_check.request_errors(request.path, "POST", request.body) == []
    assert sum(r.operation == "users.list" for r in pipedrive.received) == 1


def test_accounts_names_each_mailboxs_crm_user_or_why_it_has_none(cli: Cli, team: Team) -> None:
    rows = _accounts(cli)
    assert rows[ALICE]["crm_user"] == {
        "id": str(team.alice),
        "name": "Alice Rep",
        "email": ALICE,
        "source": "email",
    }
    assert rows[ALICE]["crm_user_reason"] is None
    assert rows[BOB]["crm_user"]["id"] == str(team.bob)
    assert rows[CAROL]["crm_user"] is None
    assert "no CRM user" in rows[CAROL]["crm_user_reason"]

    text = cli("accounts")
    assert text.code == 0, text.err
    lines = {line.split()[0]: line for line in text.out.splitlines()}
    assert f"crm user: Alice Rep ({team.alice})" in lines[ALICE]
    assert "crm user: none (no CRM user" in lines[CAROL]


def test_a_user_set_by_hand_owns_the_mailboxs_next_emails_until_auto(
    cli: Cli, google: GoogleSandbox, pipedrive: PipedriveSandbox, team: Team
) -> None:
    set_by_hand = cli("accounts", "owner", CAROL, str(team.bob))
    assert set_by_hand.code == 0, set_by_hand.err
    assert f"CRM user {team.bob} (Bob Rep)" in set_by_hand.out
    assert _accounts(cli)[CAROL]["crm_user"]["source"] == "override"

    _mail(google, (CAROL,), CAROL, XAVIER, "Carol for Bob", 2)
    assert cli("sync", "--once").code == 0
    assert team.activity("Carol for Bob")["owner_id"] == team.bob

    back = cli("accounts", "owner", CAROL, "--auto")
    assert back.code == 0, back.err
    assert "no CRM user" in back.out
    assert _accounts(cli)[CAROL]["crm_user"] is None
    _mail(google, (CAROL,), CAROL, XAVIER, "Carol alone again", 1)
    assert cli("sync", "--once").code == 0
    assert team.activity("Carol alone again")["owner_id"] == 1


def test_owner_refuses_an_unknown_user_and_a_missing_choice(cli: Cli, team: Team) -> None:
    unknown = cli("accounts", "owner", CAROL, "999")
    assert unknown.code == 2
    assert "999" in unknown.err and "Traceback" not in unknown.err
    inactive = cli("accounts", "owner", CAROL, str(team.former))  # deactivated
    assert inactive.code == 2
    neither = cli("accounts", "owner", CAROL)
    assert neither.code == 2 and "--auto" in neither.err
    both = cli("accounts", "owner", CAROL, str(team.bob), "--auto")
    assert both.code == 2
    assert _accounts(cli)[CAROL]["crm_user"] is None
