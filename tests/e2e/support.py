"""Helpers of the end-to-end tests (constants, connecting a mailbox, acting as the browser)."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import UTC, datetime

import requests

from maillink.app import App
from maillink.sandbox.google import GoogleSandbox

DOMAIN = "acme.example"
REP = f"alice@{DOMAIN}"
NOW = datetime.now(UTC).replace(microsecond=0)
GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.metadata"


def connect(app: App, google: GoogleSandbox, email: str = REP) -> None:
    """A mailbox stored as `maillink connect gmail` stores it, with a real refresh token."""
    from maillink.store import accounts

    token = google.issue_refresh_token(email)
    secret = app.cipher.encrypt(json.dumps({"refresh_token": token, "scopes": [GMAIL_SCOPE]}))
    with app.store.transaction() as conn:
        accounts.upsert(conn, email, "gmail", secret, GMAIL_SCOPE)


def follow_printed_url(process: subprocess.Popen[str]) -> str:
    """Act as the browser: read the authorization URL the command printed and follow it."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("http"):
            url = line.strip()
            threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 30}).start()
            return url
    raise AssertionError("no authorization URL was printed")
