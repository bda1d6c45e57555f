"""What a fleet of idle Gmail mailboxes costs a process: one API description shared by every
mailbox's client, little memory per idle mailbox, token refreshes only when a round needs one,
and a busy token endpoint handled by the one retry policy (issue 11)."""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials
from tests.e2e.support import DOMAIN, connect
from tests.providers.test_gmail import START, MemoryStore, Sleeps

from maillink.app import App
from maillink.config import load_settings
from maillink.providers import gmail_api, graph_api
from maillink.providers.base import NeedsReauth
from maillink.providers.gmail import GmailProvider
from maillink.providers.gmail_api import SCOPE_METADATA
from maillink.providers.google_token import SPREAD, due, spread
from maillink.providers.graph import GraphProvider
from maillink.providers.retry import RetryPolicy, Throttled
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts

IDLE_BYTES_PER_MAILBOX = 50 * 1024


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


def box(i: int) -> str:
    return f"rep{i:03d}@{DOMAIN}"


def gmail(google: GoogleSandbox, email: str, sleeps: Sleeps | None = None) -> GmailProvider:
    credentials = Credentials(
        None,
        refresh_token=google.issue_refresh_token(email),
        token_uri=google.token_uri,
        client_id=google.client_id,
        client_secret=google.client_secret,
        scopes=[SCOPE_METADATA],
    )
    policy = RetryPolicy(sleep=sleeps if sleeps is not None else Sleeps())
    return GmailProvider(email, credentials, api_endpoint=google.api_endpoint, policy=policy)


def mailboxes(google: GoogleSandbox, n: int) -> list[str]:
    emails = [box(i) for i in range(n)]
    for email in emails:
        google.add_mailbox(email)
        google.add_message(
            email,
            headers=[("From", "ana@client.example"), ("To", email), ("Subject", "Hi")],
            internal_date=START,
            label_ids=("INBOX",),
        )
    return emails


def test_every_mailbox_client_is_built_from_one_parsed_description(
    google: GoogleSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = gmail_api.api_description()
    built: list[Any] = []
    real = gmail_api.build_from_document

    def spy(service: Any, **kwargs: Any) -> Any:
        built.append(service)
        return real(service, **kwargs)

    def no_read(*args: object) -> None:
        raise AssertionError("the API description was read again")

    monkeypatch.setattr(gmail_api, "build_from_document", spy)
    monkeypatch.setattr(gmail_api, "get_static_doc", no_read)
    first, second = mailboxes(google, 2)

    MemoryStore().sync(gmail(google, first))
    MemoryStore().sync(gmail(google, second))

    assert len(built) == 2  # one client per round, each built from the shared description
    assert built[0] is shared and built[1] is shared
    assert gmail_api.api_description() is shared
    # Trimmed to the calls maillink makes: the rest of Gmail's API is never loaded.
    users = shared["resources"]["users"]
    assert set(users["methods"]) == set(gmail_api.USED_METHODS[""]) >= {"getProfile"}
    assert {name: set(r["methods"]) for name, r in users["resources"].items()} == {
        "messages": {"list", "get"},
        "threads": {"get"},
        "history": {"list"},
    }
    assert "drafts" not in users["resources"] and "send" not in users["resources"]["messages"]


def test_an_idle_mailbox_holds_at_most_50_kb(google: GoogleSandbox) -> None:
    n = 25
    emails = mailboxes(google, n + 1)
    warm = gmail(google, emails[0])
    MemoryStore().sync(warm)  # imports, the shared description, the sandbox's first answers
    made: list[tuple[GmailProvider, MemoryStore]] = []
    gc.collect()
    tracemalloc.start(8)
    try:
        before = _of_the_clients(tracemalloc.take_snapshot())
        for email in emails[1:]:
            provider, store = gmail(google, email), MemoryStore()
            store.sync(provider)  # a first round
            store.sync(provider)  # and an idle one
            made.append((provider, store))  # kept: even a kept adapter is small when idle
        gc.collect()
        after = _of_the_clients(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    retained = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert all(len(store.messages) == 1 for _, store in made)
    top = "; ".join(str(stat) for stat in after.compare_to(before, "lineno")[:5])
    assert retained / n <= IDLE_BYTES_PER_MAILBOX, f"{retained / n / 1024:.0f} KiB/mailbox: {top}"


def _of_the_clients(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """What the mailboxes' adapters allocated (and what they hold: the messages of the test's
    store too), not what the sandbox's server threads or other tests' leftovers did."""
    return snapshot.filter_traces(
        [tracemalloc.Filter(True, "*/maillink/providers/*", all_frames=True)]
    ).filter_traces([tracemalloc.Filter(False, "*/maillink/sandbox/*", all_frames=True)])


def test_a_busy_token_endpoint_is_waited_out_as_it_asks(google: GoogleSandbox) -> None:
    (email,) = mailboxes(google, 1)
    sleeps = Sleeps()
    google.faults.add(Fault(path=r"/token$", status=429, headers={"Retry-After": "7"}, times=2))

    store = MemoryStore()
    provider = gmail(google, email, sleeps)
    store.sync(provider)

    assert len(store.messages) == 1
    assert sleeps == [7.0, 7.0]  # Retry-After, through the policy; no retry of the library's
    assert google.meter.requests["oauth.token"] == 1  # answered once, after two 429s
    assert google.meter.statuses[429] == 2


def test_an_unavailable_token_endpoint_fails_the_round_not_the_grant(
    google: GoogleSandbox,
) -> None:
    (email,) = mailboxes(google, 1)
    sleeps = Sleeps()
    google.faults.add(Fault(path=r"/token$", status=503, times=100))

    provider = gmail(google, email, sleeps)
    with pytest.raises(Throttled) as raised:
        MemoryStore().sync(provider)

    assert not isinstance(raised.value, NeedsReauth)
    assert provider.http_requests == RetryPolicy().attempts  # token requests, each one answered 503
    assert len(sleeps) == RetryPolicy().attempts - 1
    assert google.meter.requests["gmail.users.getProfile"] == 0


# --- through the App: the daemon's providers -------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, google: GoogleSandbox) -> Iterator[App]:
    with PipedriveSandbox() as pipedrive:
        opened = App(load_settings(write_workspace(tmp_path, google, pipedrive)))
        yield opened
        opened.close()


def test_building_every_mailbox_provider_refreshes_no_token_until_a_round_runs(
    app: App, google: GoogleSandbox
) -> None:
    for email in mailboxes(google, 25):
        connect(app, google, email)
    built = [app.provider_for(account) for account in app.store_accounts()]
    assert len(built) == 25
    assert google.meter.requests["oauth.token"] == 0

    store = MemoryStore()
    store.sync(built[0])  # the mailbox's first round: its first request refreshes
    store.sync(built[0])  # its next round, the token still valid: no refresh
    assert google.meter.requests["oauth.token"] == 1


def test_a_mailbox_whose_token_endpoint_is_unavailable_fails_alone(
    app: App, google: GoogleSandbox
) -> None:
    unlucky, lucky = mailboxes(google, 2)
    connect(app, google, unlucky)
    connect(app, google, lucky)
    policy = RetryPolicy(sleep=Sleeps())
    google.faults.add(Fault(path=r"/token$", status=503, times=RetryPolicy().attempts))

    failed = app.syncer().run(
        app.account(unlucky), app.provider_for(app.account(unlucky), policy=policy)
    )
    done = app.syncer().run(app.account(lucky), app.provider_for(app.account(lucky), policy=policy))

    assert failed.error is not None and "503" in failed.error
    assert app.account(unlucky).status == accounts.ACTIVE  # not needs_reauth: next round retries
    assert done.error is None and done.messages == 1


def test_a_restarted_process_uses_the_access_tokens_kept_by_earlier_rounds(
    app: App, google: GoogleSandbox
) -> None:
    emails = mailboxes(google, 10)
    for email in emails:
        connect(app, google, email)
    for account in app.store_accounts():  # every mailbox's round, in the process before
        MemoryStore().sync(app.provider_for(account))
    assert google.meter.requests["oauth.token"] == 10

    restarted = App(app.settings)  # a daemon started again: no access token in its memory
    try:
        for account in restarted.store_accounts():
            MemoryStore().sync(restarted.provider_for(account))
    finally:
        restarted.close()

    assert google.meter.requests["oauth.token"] == 10  # no burst of refreshes at the start
    assert google.meter.requests["gmail.users.getProfile"] == 20


def test_a_kept_access_token_that_is_spent_is_refreshed_at_the_round_that_needs_it(
    app: App, google: GoogleSandbox
) -> None:
    (email,) = mailboxes(google, 1)
    connect(app, google, email)
    MemoryStore().sync(app.provider_for(app.account(email)))
    google.expire_access_tokens(email)  # the kept token is refused (401): refreshed, sent again

    store = MemoryStore()
    store.sync(app.provider_for(app.account(email)))

    assert len(store.messages) == 1
    assert google.meter.requests["oauth.token"] == 2


def test_tokens_obtained_together_are_refreshed_apart() -> None:
    expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    fleet = [Credentials("access", refresh_token=f"refresh-{i}", expiry=expiry) for i in range(200)]
    offsets = [spread(credentials) for credentials in fleet]
    assert all(timedelta(0) <= offset < SPREAD for offset in offsets)
    per_minute = Counter(int(offset.total_seconds() // 60) for offset in offsets)
    assert len(per_minute) == 15 and max(per_minute.values()) <= 30  # not all in one instant
    for credentials, early in zip(fleet[:20], offsets[:20], strict=True):
        point = (expiry - early).replace(tzinfo=UTC)
        assert not due(credentials, early, now=point - timedelta(seconds=1))
        assert due(credentials, early, now=point)
    assert spread(fleet[0]) == spread(Credentials("other", refresh_token="refresh-0"))


def test_graph_mailboxes_share_one_connection_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []

    class Counted(graph_api.CABundleSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(graph_api, "CABundleSession", Counted)
    monkeypatch.setattr(graph_api, "_sessions", {})
    for i in range(20):
        GraphProvider(box(i), lambda: "token", graph_url="https://graph.example/v1.0")

    assert len(made) == 1
    policy = made[0].cookies.get_policy()  # type: ignore[attr-defined]
    assert not policy.allowed_domains()  # one mailbox's cookies never ride on another's
