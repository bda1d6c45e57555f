"""Who owns an email, end to end, in both CRMs: each activity (HubSpot: email engagement) belongs
to the CRM user (Pipedrive user, HubSpot owner) of the rep whose mailbox the email came from (the
sender's, else the first connected recipient's), is linked to the primary person's organization
(company), and `maillink accounts` names each mailbox's user or says why it has none. Through
`maillink` as a user runs it, against the sandboxes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import Ran
from tests.e2e.support import DOMAIN, NOW, REP, CrmSandbox, Logged, both_crms, connect

import openapi_check
from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox

ALICE, BOB, CAROL = REP, f"bob@{DOMAIN}", f"carol@{DOMAIN}"  # Carol has no CRM user
XAVIER, YVONNE = "xavier@customer.example", "yvonne@other.example"
Cli = Callable[..., Ran]


class Team:
    """The sandbox company: users for Alice and Bob, Xavier in an organization, Yvonne in none.

    `unowned` is who owns an email of a mailbox without a CRM user: Pipedrive's token user (1),
    nobody in HubSpot."""

    def __init__(self, crm: CrmSandbox):
        self.crm = crm
        self.former: int | None = None
        if crm.kind == "hubspot":
            hubspot = crm.sandbox
            self.alice = hubspot.add_owner(ALICE.upper(), "Alice", "Rep")
            self.bob = hubspot.add_owner(BOB, "Bob", "Rep")
            self.former = hubspot.add_owner(f"dan@{DOMAIN}", "Former", "Rep", archived=True)
            self.org = hubspot.add_company("Customer Ltd", "customer.example")
            self.xavier = hubspot.add_contact(XAVIER, "Xavier", company_id=self.org)
            self.yvonne = hubspot.add_contact(YVONNE, "Yvonne")
            self.unowned: str | None = None
            return
        pipedrive = crm.sandbox
        self.alice = pipedrive.add_user("Alice Rep", ALICE.upper())  # matched case-insensitively
        self.bob = pipedrive.add_user("Bob Rep", BOB)
        self.former = pipedrive.add_user("Former Rep", f"dan@{DOMAIN}", active=False)
        self.org = pipedrive.add_organization("Customer Ltd")
        self.xavier = pipedrive.add_person("Xavier", [XAVIER], org_id=self.org)
        self.yvonne = pipedrive.add_person("Yvonne", [YVONNE])
        self.unowned = "1"

    def activity(self, subject: str) -> Logged:
        [found] = [e for e in self.crm.emails() if e.subject == subject]
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
def team(config: Path, google: GoogleSandbox, crm: CrmSandbox) -> Team:
    for mailbox in (ALICE, BOB, CAROL):
        google.add_mailbox(mailbox)
    app = App(load_settings(config))
    try:
        for mailbox in (ALICE, BOB, CAROL):
            connect(app, google, mailbox)
    finally:
        app.close()
    return Team(crm)


def _accounts(cli: Cli) -> dict[str, dict[str, Any]]:
    ran = cli("accounts", "--json")
    assert ran.code == 0, ran.err
    return {row["email"]: row for row in json.loads(ran.out)}


@both_crms
def test_each_activity_belongs_to_its_reps_crm_user_and_the_persons_organization(
    cli: Cli, google: GoogleSandbox, crm: CrmSandbox, team: Team
) -> None:
    _mail(google, (ALICE,), ALICE, XAVIER, "outbound from Alice", 5)
    _mail(google, (BOB,), XAVIER, BOB, "inbound to Bob", 4)
    # Two connected reps in To: Bob comes first, in both copies; one activity.
    _mail(google, (ALICE, BOB), XAVIER, f"{BOB}, {ALICE}", "inbound to Bob and Alice", 3)
    _mail(google, (CAROL,), CAROL, YVONNE, "outbound from Carol", 2)

    ran = cli("sync", "--once")
    assert ran.code == 0, ran.err

    assert len(crm.emails()) == 4
    owners = {e.subject: (e.owner, e.organization) for e in crm.emails()}
    alice, bob, org = str(team.alice), str(team.bob), str(team.org)
    assert owners == {
        "outbound from Alice": (alice, org),
        "inbound to Bob": (bob, org),
        "inbound to Bob and Alice": (bob, org),
        "outbound from Carol": (team.unowned, None),  # no CRM user: the CRM's default
    }
    if crm.kind == "hubspot":
        hubspot = crm.sandbox
        created = [r for r in hubspot.received if r.path.endswith("/emails/batch/create")]
        carol = [
            i
            for r in created
            for i in r.body["inputs"]
            if i["properties"]["hs_email_subject"] == "outbound from Carol"
        ]
        assert carol and "hubspot_owner_id" not in carol[0]["properties"]
        assert sum(r.path == "/crm/v3/owners" for r in hubspot.received) == 1
        return
    pipedrive = crm.sandbox
    posted = {
        r.body["subject"]: r for r in pipedrive.received if r.operation == "activities.create"
    }
    assert "owner_id" not in posted["outbound from Carol"].body
    assert "org_id" not in posted["outbound from Carol"].body
    for request in posted.values():
        assert openapi_check.request_errors(request.path, "POST", request.body) == []
    assert sum(r.operation == "users.list" for r in pipedrive.received) == 1


@both_crms
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


@both_crms
def test_a_user_set_by_hand_owns_the_mailboxs_next_emails_until_auto(
    cli: Cli, google: GoogleSandbox, team: Team
) -> None:
    set_by_hand = cli("accounts", "owner", CAROL, str(team.bob))
    assert set_by_hand.code == 0, set_by_hand.err
    assert f"CRM user {team.bob} (Bob Rep)" in set_by_hand.out
    assert _accounts(cli)[CAROL]["crm_user"]["source"] == "override"

    _mail(google, (CAROL,), CAROL, XAVIER, "Carol for Bob", 2)
    assert cli("sync", "--once").code == 0
    assert team.activity("Carol for Bob").owner == str(team.bob)

    back = cli("accounts", "owner", CAROL, "--auto")
    assert back.code == 0, back.err
    assert "no CRM user" in back.out
    assert _accounts(cli)[CAROL]["crm_user"] is None
    _mail(google, (CAROL,), CAROL, XAVIER, "Carol alone again", 1)
    assert cli("sync", "--once").code == 0
    assert team.activity("Carol alone again").owner == team.unowned


@both_crms
def test_owner_refuses_an_unknown_user_and_a_missing_choice(cli: Cli, team: Team) -> None:
    unknown = cli("accounts", "owner", CAROL, "999")
    assert unknown.code == 2
    assert "999" in unknown.err and "Traceback" not in unknown.err
    inactive = cli("accounts", "owner", CAROL, str(team.former))  # deactivated (archived)
    assert inactive.code == 2
    assert str(team.former) in inactive.err and "Traceback" not in inactive.err
    neither = cli("accounts", "owner", CAROL)
    assert neither.code == 2 and "--auto" in neither.err
    both = cli("accounts", "owner", CAROL, str(team.bob), "--auto")
    assert both.code == 2
    assert _accounts(cli)[CAROL]["crm_user"] is None
