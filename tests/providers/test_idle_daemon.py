"""What a daemon keeps between a fleet's rounds (issue 11): no client per mailbox, one MSAL
application per configuration, one connection pool; and a busy Microsoft token endpoint (429,
503) waited out by the one retry policy, failing only that mailbox's round.

The rounds run through `Daemon._round`, as the daemon's workers run them, against the Gmail and
Microsoft sandboxes; Microsoft mailboxes hold MSAL's token cache as the sign-in leaves it.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msal
import pytest
import requests
from tests.e2e.support import connect
from tests.providers.test_gmail import Sleeps

from maillink.app import App
from maillink.config import load_settings
from maillink.daemon.loop import Daemon
from maillink.onboarding import microsoft_msal
from maillink.onboarding.microsoft_msal import MicrosoftTokenSource
from maillink.providers.gmail import GmailProvider
from maillink.providers.graph import GraphProvider
from maillink.providers.retry import RetryPolicy
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts, leases

DOMAIN = "fleet.example"
RECEIVED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SCOPES = ["Mail.ReadBasic", "User.Read"]
TOKEN_PATH = r"/oauth2/v2.0/token$"
AAD_BUSY = json.dumps(
    {
        "error": "temporarily_unavailable",
        "error_description": "AADSTS50196: The server is temporarily unavailable.",
    }
)


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def app(
    tmp_path: Path, google: GoogleSandbox, ms: MicrosoftSandbox, monkeypatch: pytest.MonkeyPatch
) -> Iterator[App]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)  # the sandbox's throwaway CA
    with PipedriveSandbox() as pipedrive:
        config = write_workspace(tmp_path, google, pipedrive, microsoft=ms)
        opened = App(load_settings(config, env={}))
        yield opened
        opened.close()


def gmail_box(app: App, google: GoogleSandbox, i: int) -> str:
    email = f"g{i:02d}@{DOMAIN}"
    google.add_mailbox(email)
    google.add_message(
        email,
        headers=[("From", "ana@client.example"), ("To", email), ("Subject", "Hi")],
        internal_date=RECEIVED,
        label_ids=("INBOX",),
    )
    connect(app, google, email)
    return email


def microsoft_box(app: App, ms: MicrosoftSandbox, i: int) -> str:
    """A Microsoft mailbox stored as `maillink connect microsoft` stores it: MSAL's token cache
    (from a refresh of a sandbox grant, through MSAL) and the account's home id."""
    email = f"m{i:02d}@{DOMAIN}"
    ms.add_mailbox(email, f"Rep {i}")
    ms.add_message(
        email,
        "inbox",
        internet_message_id=f"<m{i}@client.example>",
        subject="Hello",
        sender="ana@client.example",
        to=[email],
        received=RECEIVED,
    )
    session = requests.Session()
    session.verify = ms.ca_bundle
    cache = msal.SerializableTokenCache()
    client = msal.PublicClientApplication(
        ms.client_id,
        authority=ms.authority,
        instance_discovery=False,
        http_client=session,
        token_cache=cache,
    )
    refresh = ms.identity.issue_refresh_token(email, tuple(SCOPES))
    assert "access_token" in client.acquire_token_by_refresh_token(refresh, SCOPES)
    home = client.get_accounts()[0]["home_account_id"]
    session.close()
    secret = app.cipher.encrypt(
        json.dumps({"token_cache": cache.serialize(), "home_account_id": home, "scopes": SCOPES})
    )
    with app.store.transaction() as conn:
        accounts.upsert(conn, email, "microsoft", secret, " ".join(SCOPES))
    return email


def daemon_for(app: App) -> Daemon:
    daemon = Daemon(app, should_stop=threading.Event().is_set, workers=1)
    with app.store.transaction() as conn:
        leases.ensure(conn, daemon.clock())
    return daemon


def run_round(daemon: Daemon, email: str) -> None:
    """One round of `email`'s mailbox as a daemon worker runs it (its lease taken first)."""
    account = daemon.app.account(email)
    (lease,) = daemon.rounds.acquire(limit=1, account_ids=[account.id], due_only=False)
    daemon._round(lease)


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def test_a_daemon_keeps_no_client_per_mailbox_after_its_rounds(
    app: App, google: GoogleSandbox, ms: MicrosoftSandbox
) -> None:
    gmail = [gmail_box(app, google, i) for i in range(8)]
    outlook = [microsoft_box(app, ms, i) for i in range(4)]
    ms.meter.reset()
    msal_apps = alive(msal.ClientApplication)
    daemon = daemon_for(app)

    for email in gmail + outlook:
        run_round(daemon, email)  # the first sync
        run_round(daemon, email)  # an idle round

    for email in gmail + outlook:
        account = app.account(email)
        assert account.last_error is None and account.last_sync_at is not None
    # Nothing of a mailbox's client outlives its round: no adapter, no token source.
    assert alive(GmailProvider) == 0
    assert alive(GraphProvider) == 0
    assert alive(MicrosoftTokenSource) == 0
    # One MSAL application for the configuration, shared by the Microsoft mailboxes, holding
    # no mailbox's token cache between calls.
    shared = [
        found
        for key, found in microsoft_msal._shared.items()
        if key[1] == app.settings.microsoft.authority
    ]
    assert len(shared) == 1
    assert alive(msal.ClientApplication) - msal_apps == 1
    assert getattr(shared[0].caches._local, "cache", None) is None
    # What a round needs from the one before is in the store: one Gmail refresh per mailbox
    # (its first round), and none for Microsoft (the sign-in's access tokens still valid).
    assert google.meter.requests["oauth.token"] == len(gmail)
    assert ms.meter.requests["identity.token"] == 0
    assert ms.meter.requests["identity.discovery"] <= 1  # the shared application's, once


@pytest.mark.parametrize(
    ("status", "headers", "body", "waits"),
    [
        (429, {"Retry-After": "7"}, "", [7.0, 7.0]),
        (503, {"Retry-After": "3"}, AAD_BUSY, [3.0, 3.0]),
        (503, {}, AAD_BUSY, None),  # no Retry-After: the policy's backoff
        (429, {}, "", None),
    ],
)
def test_a_busy_microsoft_token_endpoint_is_waited_out_by_the_policy(
    app: App,
    ms: MicrosoftSandbox,
    status: int,
    headers: dict[str, str],
    body: str,
    waits: list[float] | None,
) -> None:
    email = microsoft_box(app, ms, 0)
    ms.expire_access_tokens(email)  # Graph refuses the kept token (401): a refresh is needed
    ms.faults.add(Fault(path=TOKEN_PATH, status=status, headers=headers, body=body, times=2))
    ms.meter.reset()
    sleeps = Sleeps()

    account = app.account(email)
    result = app.syncer().run(account, app.provider_for(account, policy=RetryPolicy(sleep=sleeps)))

    assert result.error is None and result.messages == 1
    assert len(sleeps) == 2
    if waits is not None:
        assert sleeps == waits  # Retry-After, as the token endpoint asked
    assert ms.meter.requests["identity.token"] == 1  # answered once, after two refusals
    assert ms.meter.statuses[status] == 2


def test_an_unavailable_microsoft_token_endpoint_fails_that_mailbox_alone(
    app: App, ms: MicrosoftSandbox
) -> None:
    unlucky, lucky = microsoft_box(app, ms, 0), microsoft_box(app, ms, 1)
    ms.expire_access_tokens(unlucky)
    ms.expire_access_tokens(lucky)
    attempts = RetryPolicy().attempts
    ms.faults.add(Fault(path=TOKEN_PATH, status=503, times=attempts))
    policy = RetryPolicy(sleep=Sleeps())
    failed = app.syncer().run(
        app.account(unlucky), app.provider_for(app.account(unlucky), policy=policy)
    )
    done = app.syncer().run(app.account(lucky), app.provider_for(app.account(lucky), policy=policy))

    assert failed.error is not None
    assert "503" in failed.error and "token endpoint" in failed.error
    assert app.account(unlucky).status == accounts.ACTIVE  # not needs_reauth: retried next round
    assert done.error is None and done.messages == 1


def test_a_microsoft_token_endpoint_that_stays_busy_fails_the_daemon_round_with_a_clear_error(
    app: App, ms: MicrosoftSandbox
) -> None:
    email = microsoft_box(app, ms, 0)
    ms.expire_access_tokens(email)
    # Longer than the policy waits inside a round: the round gives up, the mailbox backs off.
    ms.faults.add(Fault(path=TOKEN_PATH, status=429, headers={"Retry-After": "600"}, times=10))
    daemon = daemon_for(app)

    run_round(daemon, email)

    account = app.account(email)
    assert account.status == accounts.ACTIVE
    assert account.last_error is not None
    assert "throttled" in account.last_error and "429" in account.last_error
    assert ms.meter.statuses[429] == 1  # asked once: no retry before the Retry-After
