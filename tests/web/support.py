"""Helpers of the web tests: a small team in the sandboxes, and ways to drive the web app.

ann@ and bob@acme.example are reps. carol (ann's customer) and dave (bob's) each have an open deal
and an open lead older than their thread, so those threads wait for a choice; eve has one deal,
so ann's thread with her is linked at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask
from flask.testing import FlaskClient

from maillink.app import App
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.store import users

ANN = "ann@acme.example"
BOB = "bob@acme.example"
ADMIN = "boss@acme.example"
NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(days=20)
PUBLIC_URL = "http://localhost:8080"

# `maillink …` with serve and users registered, as cli.py will do (until then, done here).
MAILLINK = """
import sys
from maillink.cli import cli, main
from maillink.web.commands import serve, users
cli.add_command(serve)
cli.add_command(users)
main(sys.argv[1:])
"""


@dataclass
class Team:
    google: GoogleSandbox
    pipedrive: PipedriveSandbox
    folder: Path
    config: Path
    deals: dict[str, int]
    leads: dict[str, str]
    key: str  # the encryption key in credentials.json


def _mail(
    google: GoogleSandbox,
    mailbox: str,
    sender: str,
    to: str,
    subject: str,
    when: datetime,
    mid: str,
    thread: str | None = None,
    reply_to: str | None = None,
) -> str:
    headers = [
        ("From", sender),
        ("To", to),
        ("Subject", subject),
        ("Date", format_datetime(when)),
        ("Message-ID", f"<{mid}@mail.example>"),
    ]
    if reply_to:
        headers.append(("In-Reply-To", f"<{reply_to}@mail.example>"))
    labels = ("SENT",) if sender.endswith("acme.example") else ("INBOX",)
    return google.add_message(
        mailbox, headers=headers, internal_date=when, thread_id=thread, label_ids=labels
    )


def seed(
    google: GoogleSandbox, pipedrive: PipedriveSandbox
) -> tuple[dict[str, int], dict[str, str]]:
    carol = pipedrive.add_person("Carol Diaz", ["carol@customer.example"])
    dave = pipedrive.add_person("Dave Kim", ["dave@other.example"])
    eve = pipedrive.add_person("Eve Young", ["eve@third.example"])
    deals = {
        "carol": pipedrive.add_deal(
            "Customer renewal 2026", carol, add_time=T0 - timedelta(days=30)
        ),
        "dave": pipedrive.add_deal("Other Inc pilot", dave, add_time=T0 - timedelta(days=30)),
        "eve": pipedrive.add_deal("Third Co expansion", eve, add_time=T0 - timedelta(days=30)),
    }
    leads = {
        "carol": pipedrive.add_lead(
            "Customer: analytics upsell", carol, add_time=T0 - timedelta(days=9)
        ),
        "dave": pipedrive.add_lead("Other Inc: second site", dave, add_time=T0 - timedelta(days=9)),
    }
    for rep in (ANN, BOB):
        google.add_mailbox(rep)
    first = _mail(
        google,
        ANN,
        "Carol Diaz <carol@customer.example>",
        ANN,
        "Renewal quote <b>2026</b>",
        T0,
        "a1",
    )
    _mail(
        google,
        ANN,
        ANN,
        "carol@customer.example",
        "Re: Renewal quote <b>2026</b>",
        T0 + timedelta(days=1),
        "a2",
        first,
        "a1",
    )
    _mail(
        google, ANN, "Eve Young <eve@third.example>", ANN, "Kickoff", T0 + timedelta(days=2), "a3"
    )
    _mail(google, BOB, "Dave Kim <dave@other.example>", BOB, "Pricing for Q3", T0, "b1")
    return deals, leads


def write_credentials(
    folder: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox, key: str | list[str]
) -> None:
    (folder / "credentials.json").write_text(
        json.dumps(
            {
                "google": google.client_config(),
                "pipedrive": {"api_token": pipedrive.api_token},
                "encryption_key": key,
            }
        )
    )


def add_user(app: App, email: str, *, admin: bool = False) -> str:
    """The sign-in token of a new web user."""
    with app.store.transaction() as conn:
        _user, token = users.issue(conn, email, is_admin=admin)
    return token


def csrf(client: FlaskClient, path: str = "/mailboxes") -> str:
    page = client.get(path)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert found, f"no CSRF token on {path} ({page.status_code})"
    return found.group(1)


def sign_in(web: Flask, app: App, email: str, *, admin: bool = False) -> FlaskClient:
    client = web.test_client()
    token = add_user(app, email, admin=admin)
    answer = client.get(f"/signin?token={token}")
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return client


def connect_via_web(client: FlaskClient, web: Flask, google: GoogleSandbox, email: str) -> int:
    """The whole consent: our POST → Google's consent → our callback; returns the account id."""
    google.consent_as = email
    start = client.post("/connect/google", data={"csrf_token": csrf(client)})
    assert start.status_code == 303, start.get_data(as_text=True)
    consent = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert consent.status_code == 302, consent.text
    back = urlsplit(consent.headers["Location"])
    done = client.get(f"{back.path}?{back.query}")
    assert done.status_code == 303, done.get_data(as_text=True)
    account_id = int(done.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    job = web.extensions["maillink"].jobs.wait(account_id)
    assert job is not None and job.error is None, job
    return account_id


def thread_id(app: App, subject: str) -> int:
    from sqlalchemy import select

    from maillink.store.schema import threads

    with app.store.engine.connect() as conn:
        found = conn.execute(
            select(threads.c.id).where(threads.c.subject.contains(subject, autoescape=True))
        ).scalar()
    assert found is not None, subject
    return int(found)


def text(answer: Any) -> str:
    return str(answer.get_data(as_text=True))
