"""The Microsoft side of the web tests: the Microsoft sandbox beside the team's Google and
Pipedrive sandboxes (tests/web/support.py), with ann's mail, and maillink configured for it.

The sandbox runs a confidential client (a client secret) with the web app's redirect URI
registered, as an Entra ID "Web" app registration; boss@acme.example is a tenant administrator.
ann's thread with carol waits for a choice (carol has an open deal and an open lead older than
the thread); her email from eve is linked at once (eve has one deal).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from tests.web.support import ADMIN, ANN, BOB, T0, Team, csrf
from werkzeug.test import TestResponse

from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.microsoft.mailbox import new_conversation_id

SECRET = "sandbox-web-secret"
CALLBACK_PATH = "/oauth/microsoft/callback"


@contextmanager
def microsoft_for(
    team: Team, monkeypatch: pytest.MonkeyPatch, public_url: str | None, secret: str | None = SECRET
) -> Iterator[MicrosoftSandbox]:
    """The sandbox running, seeded, and named in the team's maillink.toml and credentials.json
    (its throwaway CA through REQUESTS_CA_BUNDLE, as docs/configuration.md says); the web app's
    callback at `public_url` registered (None: register it later, once the port is known)."""
    with MicrosoftSandbox(client_secret=secret) as ms:
        for email in (ANN, BOB, ADMIN):
            ms.add_mailbox(email, email.split("@")[0].title())
        ms.make_admin(ADMIN)
        if public_url is not None:
            ms.register_redirect_uri(public_url + CALLBACK_PATH)
        seed_mail(ms)
        with team.config.open("a") as config:
            config.write(
                f'\n[microsoft]\nauthority = "{ms.authority}"\ngraph_url = "{ms.graph_url}"\n'
            )
        path = team.folder / "credentials.json"
        credentials = json.loads(path.read_text())
        credentials["microsoft"] = {"client_id": ms.client_id}
        if secret is not None:  # else a public client
            credentials["microsoft"]["client_secret"] = secret
        path.write_text(json.dumps(credentials))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)
        yield ms


def seed_mail(ms: MicrosoftSandbox) -> None:
    carol = ("Carol Diaz", "carol@customer.example")
    renewal = new_conversation_id("ann/renewal")
    ms.add_message(
        ANN,
        "inbox",
        internet_message_id="<m1@mail.example>",
        subject="Outlook renewal quote",
        sender=carol,
        to=[ANN],
        received=T0,
        conversation_id=renewal,
    )
    ms.add_message(
        ANN,
        "sentitems",
        internet_message_id="<m2@mail.example>",
        subject="Re: Outlook renewal quote",
        sender=ANN,
        to=[carol],
        received=T0 + timedelta(days=1),
        conversation_id=renewal,
    )
    ms.add_message(
        ANN,
        "inbox",
        internet_message_id="<m3@mail.example>",
        subject="Outlook kickoff",
        sender=("Eve Young", "eve@third.example"),
        to=[ANN],
        received=T0 + timedelta(days=2),
    )
    ms.add_message(
        BOB,
        "inbox",
        internet_message_id="<m4@mail.example>",
        subject="Outlook pricing",
        sender=("Dave Kim", "dave@other.example"),
        to=[BOB],
        received=T0,
    )


def start(client: FlaskClient, **form: str) -> TestResponse:
    return client.post("/connect/microsoft", data={"csrf_token": csrf(client), **form})


def at_microsoft(ms: MicrosoftSandbox, location: str) -> str:
    """What the browser does at Microsoft's sign-in: back to our callback; returns its path."""
    answer = requests.get(location, verify=ms.ca_bundle, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["Location"])
    return f"{back.path}?{back.query}"


def connect_microsoft_via_web(
    client: FlaskClient, web: Flask, ms: MicrosoftSandbox, email: str
) -> int:
    """The whole sign-in: our POST → Microsoft → our callback; returns the account id."""
    ms.consent_as = email
    begun = start(client)
    assert begun.status_code == 303, begun.get_data(as_text=True)
    done = client.get(at_microsoft(ms, begun.headers["Location"]))
    assert done.status_code == 303, done.get_data(as_text=True)
    account_id = int(done.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    job = web.extensions["maillink"].jobs.wait(account_id)
    assert job is not None and job.error is None, job
    return account_id
