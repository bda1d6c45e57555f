"""`[linking] create_persons`: an email from an address the CRM does not know creates one person
(once, also when the email reached two connected mailboxes), and its activity names that person;
off by default, and never for blocked or internal addresses. Through `maillink sync --once` and
the sandboxes, as a user runs it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path

from tests.e2e.conftest import Ran
from tests.e2e.support import DOMAIN, NOW, REP, CrmSandbox, both_crms, connect

import openapi_check
from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox

COLLEAGUE = f"bob@{DOMAIN}"
STRANGER = "zoe.new@prospect.example"
Cli = Callable[..., Ran]


def _mail_from_a_stranger(google: GoogleSandbox) -> None:
    """Zoe, whom the CRM does not know, writes to Alice and Bob (both connected), with a
    blocked notifier and an internal colleague in Cc."""
    for mailbox in (REP, COLLEAGUE):
        google.add_mailbox(mailbox)
    headers = [
        ("From", f"Zoe New <{STRANGER}>"),
        ("To", f"{REP}, {COLLEAGUE}"),
        ("Cc", f"noreply@tools.example, carol@{DOMAIN}"),
        ("Subject", "Hello"),
        ("Date", format_datetime(NOW - timedelta(days=1))),
        ("Message-ID", "<zoe-1@prospect.example>"),
    ]
    for mailbox in (REP, COLLEAGUE):
        google.add_message(
            mailbox, headers=headers, internal_date=NOW - timedelta(days=1), label_ids=("INBOX",)
        )


def _connect_both(config: Path, google: GoogleSandbox) -> None:
    app = App(load_settings(config))
    try:
        for mailbox in (REP, COLLEAGUE):
            connect(app, google, mailbox)
    finally:
        app.close()


@both_crms
def test_an_email_from_an_unknown_address_creates_one_person_named_in_its_activity(
    cli: Cli, config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    config.write_text(
        config.read_text().replace("[linking]\n", "[linking]\ncreate_persons = true\n")
    )
    _mail_from_a_stranger(google)
    _connect_both(config, google)

    ran = cli("sync", "--once")
    assert ran.code == 0, ran.err

    [(zoe, name, emails)] = crm.persons()
    assert (name, emails) == ("Zoe New", [STRANGER])
    [activity] = crm.emails()
    assert activity.persons == {zoe}
    if crm.kind == "pipedrive":
        pipedrive = crm.sandbox
        creates = [r for r in pipedrive.received if r.operation == "persons.create"]
        assert len(creates) == 1
        # The request is Pipedrive's (its spec wrongly lists `title` as required).
        errors = openapi_check.request_errors(creates[0].path, "POST", creates[0].body)
        assert errors == ["<body>: 'title' is a required property"], errors
    else:
        posts = [r for r in crm.sandbox.received if r.method == "POST"]
        assert sum(r.path == "/crm/v3/objects/contacts" for r in posts) == 1

    again = cli("sync", "--once")  # nothing new: nothing created again
    assert again.code == 0, again.err
    assert len(crm.persons()) == 1 and len(crm.emails()) == 1


@both_crms
def test_by_default_no_person_is_created_and_nothing_is_written(
    cli: Cli, config: Path, google: GoogleSandbox, crm: CrmSandbox
) -> None:
    _mail_from_a_stranger(google)
    _connect_both(config, google)

    ran = cli("sync", "--once")
    assert ran.code == 0, ran.err
    assert crm.persons() == []
    assert crm.emails() == []
    explained = cli("explain", "--json", "1")
    assert "no_known_contact" in explained.out, explained.out + explained.err
