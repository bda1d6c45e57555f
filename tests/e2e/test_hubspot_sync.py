"""`maillink sync --once` with `[crm] kind = "hubspot"`: Gmail sandbox → rules → HubSpot sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from tests.e2e.support import NOW, REP, connect

from maillink.app import App
from maillink.config import load_settings
from maillink.crm.hubspot import HubSpotCRM
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.hubspot import HubSpotSandbox

ANN = "ann@customer.example"


@pytest.fixture
def hubspot_config(config: Path) -> Path:
    return config


# What is HubSpot's own (its email properties, owners, companies): on HubSpot only.
pytestmark = pytest.mark.parametrize("crm", ["hubspot"], indirect=True)


def send(google: GoogleSandbox, *, frm: str, to: str, date: datetime, mid: str, **kw: str) -> str:
    headers = [
        ("From", frm),
        ("To", to),
        ("Subject", kw.get("subject", "Quote")),
        ("Date", format_datetime(date)),
        ("Message-ID", mid),
    ]
    labels = ("SENT",) if frm == REP else ("INBOX",)
    return google.add_message(
        REP, headers=headers, internal_date=date, thread_id=kw.get("thread"), label_ids=labels
    )


def sync_once(config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    return subprocess.run(
        [sys.executable, "-m", "maillink", "sync", "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_sync_once_writes_each_email_once_to_hubspot_associated_to_the_open_deal(
    hubspot_config: Path, google: GoogleSandbox, hubspot: HubSpotSandbox
) -> None:
    owner = hubspot.add_owner(REP, "Alice", "Rep")
    acme = hubspot.add_company("Customer Inc", "customer.example")
    ann = hubspot.add_contact(ANN, "Ann", "Lee", company_id=acme)
    deal = hubspot.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    old = hubspot.add_deal("Old", ann, add_time=NOW - timedelta(days=60))
    hubspot.set_deal_status(old, "deleted", at=NOW - timedelta(days=40))
    google.add_mailbox(REP)
    app = App(load_settings(hubspot_config))
    try:
        assert isinstance(app.crm, HubSpotCRM)
        connect(app, google, REP)
    finally:
        app.close()
    first = send(google, frm=ANN, to=REP, date=NOW - timedelta(days=3), mid="<h1@mail.example>")
    send(
        google, frm=REP, to=ANN, date=NOW - timedelta(days=2), mid="<h2@mail.example>", thread=first
    )
    send(google, frm="cat@other.example", to=REP, date=NOW, mid="<h3@mail.example>")

    hubspot.lose_next_response(r"^/crm/v3/objects/emails/batch/create$")  # written, unanswered
    done = sync_once(hubspot_config)
    assert done.returncode == 0, done.stderr
    # The lost create was carried out: its emails are found again by key, not written twice
    # (the list of keys below holds each key once).
    assert hubspot.meter.requests["objects.batch.create"] >= 1
    emails = hubspot.emails()
    assert sorted(e["properties"]["maillink_key"] for e in emails) == [
        "h1@mail.example",
        "h2@mail.example",
    ]
    for email in emails:
        assert email["associations"] == {
            "contacts": [ann],
            "companies": [acme],
            "deals": [deal],
        }
        assert email["properties"]["hubspot_owner_id"] == str(owner)
    directions = {
        e["properties"]["maillink_key"]: e["properties"]["hs_email_direction"] for e in emails
    }
    assert directions == {"h1@mail.example": "INCOMING_EMAIL", "h2@mail.example": "EMAIL"}
    headers = json.loads(emails[0]["properties"]["hs_email_headers"])
    assert {headers["from"]["email"], headers["to"][0]["email"]} == {ANN, REP}

    again = sync_once(hubspot_config)
    assert again.returncode == 0, again.stderr
    assert len(hubspot.emails()) == 2  # nothing written twice


def test_without_the_maillink_key_property_writes_wait_visibly_until_the_admin_creates_it(
    hubspot_config: Path, google: GoogleSandbox, hubspot: HubSpotSandbox
) -> None:
    hubspot.records.custom.clear()  # an account whose admin has not created `maillink_key` yet
    ann = hubspot.add_contact(ANN, "Ann", "Lee")
    deal = hubspot.add_deal("Licences", ann, add_time=NOW - timedelta(days=30))
    google.add_mailbox(REP)
    app = App(load_settings(hubspot_config))
    try:
        connect(app, google, REP)
    finally:
        app.close()
    send(google, frm=ANN, to=REP, date=NOW - timedelta(days=1), mid="<k1@mail.example>")
    env = dict(os.environ, MAILLINK_CONFIG=str(hubspot_config))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "maillink", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    done = sync_once(hubspot_config)
    # The key's property is checked before the first write: the round names the cause (the
    # private app may not create properties) and writes nothing; the write waits, not failed.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error: HubSpot has no email property maillink_key" in done.stdout, done.stdout
    assert "left for later: 1 CRM writes" in done.stdout
    assert hubspot.emails() == []
    assert json.loads(cli("outbox", "list", "--json").stdout) == []

    hubspot.define_property("emails", "maillink_key", unique=True)  # the admin creates it
    again = sync_once(hubspot_config)
    assert again.returncode == 0, again.stdout + again.stderr
    (email,) = hubspot.emails()
    assert email["properties"]["maillink_key"] == "k1@mail.example"
    assert email["associations"]["deals"] == [deal]
    assert json.loads(cli("outbox", "list", "--json").stdout) == []
