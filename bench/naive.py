"""The naive strategy the benchmark compares maillink with, run as its own process.

    python -m bench.naive CONFIG EMAIL

The same backfill through the same Syncer, linker and outbox, but the way a first version would
do it: one `messages.get` request per message (no batches, no `threads.get`, no thread cache),
and no CRM caches (every page searches every address and lists every person's items again;
the company's projects are listed again each time they are needed).
"""

from __future__ import annotations

import sys
import time

from google.oauth2.credentials import Credentials as GoogleCredentials

from maillink.app import GMAIL_SCOPE, App
from maillink.config import load_settings
from maillink.crm.pipedrive import PipedriveCRM
from maillink.providers.gmail import GmailProvider


def main(config: str, email: str) -> None:
    app = App(load_settings(config))
    pipedrive = app.credentials.pipedrive
    assert pipedrive is not None and pipedrive.api_token is not None
    app.__dict__["crm"] = PipedriveCRM(
        app.settings.crm.base_url, api_token=pipedrive.api_token, projects_ttl=0
    )
    account = app.account(email)
    client = app.credentials.google_client()
    tokens = app.tokens(account)
    google = GoogleCredentials(
        token=None,
        refresh_token=tokens["refresh_token"],
        client_id=client["client_id"],
        client_secret=client.get("client_secret"),
        token_uri=client["token_uri"],
        scopes=[GMAIL_SCOPE],
    )
    provider = GmailProvider(
        account.email,
        google,
        api_endpoint=app.settings.gmail.api_endpoint,
        strategy="per_message",
    )
    started = time.monotonic()
    result = app.syncer().backfill(account, provider)
    print(
        f"naive: {result.messages} messages in {time.monotonic() - started:.1f}s"
        + (f"; error: {result.error}" if result.error else "")
    )
    app.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
