"""Graph change notifications kept by maillink against the Microsoft sandbox: a subscription per
synced folder, made after the validation handshake; new mail wakes the mailbox; a wrong
clientState changes nothing; renewed a day later, long before its 10,080 minutes; deleted on pause
and removal; made again after `subscriptionRemoved`, renewed on `reauthorizationRequired`, and a
`missed` event followed by a delta round."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import msal
import pytest
import requests
from click.testing import CliRunner
from tests.e2e.support import DOMAIN
from tests.push.conftest import T0, Clock

from maillink.app import App
from maillink.cli import cli
from maillink.config import load_settings
from maillink.errors import ConfigError
from maillink.ops.metrics import Metrics
from maillink.ops.server import MAX_BODY_BYTES, OpsContext, OpsServer, create_ops_app
from maillink.push.gmail_watch import RENEW_EVERY
from maillink.push.graph_subscriptions import (
    LIFETIME,
    RETRY_AFTER,
    GraphNotifications,
    GraphSubscriptions,
    resource_for,
)
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.microsoft.mailbox import iso
from maillink.sandbox.microsoft.subscriptions import MAX_MINUTES
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.secrets import TokenCipher
from maillink.store import accounts, leases, push
from maillink.store.push import Subscription

REP = f"olivia@{DOMAIN}"
OTHER = f"oscar@{DOMAIN}"
SCOPES = ["Mail.ReadBasic", "User.Read"]
WAIT = 20.0  # seconds: the bound on waiting for the sandbox's background notifications


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def clock(ms: MicrosoftSandbox) -> Clock:
    """The test's clock, shared by the sandbox's subscriptions (their 10,080 minutes)."""
    moved = Clock()
    ms.subscriptions.clock = moved
    return moved


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str | None:
    """SQLite (None: the workspace's file) unless a test asks for PostgreSQL too, with
    `@BOTH_STORES` (the key flows run on both databases maillink supports)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


BOTH_STORES = pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def config(
    tmp_path: Path,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
    ms: MicrosoftSandbox,
    monkeypatch: pytest.MonkeyPatch,
    store_url: str | None,
) -> Path:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)  # the sandbox's throwaway CA
    return write_workspace(
        tmp_path, google, pipedrive, microsoft=ms, internal_domains=[DOMAIN], store_url=store_url
    )


@pytest.fixture
def app(config: Path) -> Iterator[App]:
    opened = App(load_settings(config, env={}))
    yield opened
    opened.close()


def outlook_box(app: App, ms: MicrosoftSandbox, email: str) -> int:
    """A Microsoft mailbox stored as `maillink connect microsoft` stores it (MSAL's cache)."""
    ms.add_mailbox(email)
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
        return accounts.upsert(conn, email, "microsoft", secret, " ".join(SCOPES)).id


@dataclass
class Push:
    """The daemon's ops endpoint serving /push/graph, and the subscriptions' keeper."""

    url: str
    keeper: GraphSubscriptions
    ids: dict[str, int]
    woken: list[int] = field(default_factory=list)


@pytest.fixture
def graph(app: App, ms: MicrosoftSandbox, clock: Clock, config: Path) -> Iterator[Push]:
    ids = {email: outlook_box(app, ms, email) for email in (REP, OTHER)}
    woken: list[int] = []
    ctx = OpsContext(store=app.store, metrics=Metrics())
    server = OpsServer(create_ops_app(ctx), "127.0.0.1", 0).start()
    url = f"{server.url}/push/graph"
    keeper = GraphSubscriptions(app, url, clock=clock)
    ctx.graph_notifications = GraphNotifications(
        app.store, app.cipher, wake=woken.append, renew=keeper.poke, clock=clock
    )
    text = config.read_text().replace("[microsoft]\n", f'[microsoft]\nnotification_url = "{url}"\n')
    config.write_text(text)
    try:
        yield Push(url, keeper, ids, woken)
    finally:
        keeper.join(timeout=WAIT)
        server.stop()


def _rows(app: App, email: str = REP) -> dict[str, Subscription]:
    with app.store.engine.connect() as conn:
        account = accounts.get(conn, email)
        assert account is not None
        found = push.for_account(conn, account.id, push.GRAPH_SUBSCRIPTION)
    return {row.resource: row for row in found}


def _accounts(config: Path) -> dict[str, str]:
    ran = CliRunner().invoke(cli, ["--config", str(config), "accounts", "--json"])
    assert ran.exit_code == 0, ran.output
    return {row["email"]: row["push"] for row in json.loads(ran.output)}


def _until(done: Callable[[], bool]) -> None:
    """Poll (bounded) for the effect of the sandbox's background POSTs."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, "the sandbox's notification did not arrive"
        time.sleep(0.02)


def _deliver(ms: MicrosoftSandbox) -> None:
    ms.subscriptions.wait()


def _mail(ms: MicrosoftSandbox, email: str = REP, folder: str = "inbox", n: int = 1) -> str:
    return ms.add_message(
        email,
        folder,
        internet_message_id=f"<n{n}@client.example>",
        subject="Quote",
        sender="ana@client.example",
        to=[email],
        received=T0,
    )


def _post(url: str, body: object) -> requests.Response:
    return requests.post(url, json=body, timeout=10)


@BOTH_STORES
def test_a_subscription_per_synced_folder_is_made_after_the_handshake(
    graph: Push, app: App, ms: MicrosoftSandbox, config: Path
) -> None:
    assert _accounts(config) == {REP: "pending", OTHER: "pending"}
    result = graph.keeper.check()
    assert (result.subscribed, result.failed) == (4, 0)
    assert ms.subscriptions.validations == [(graph.url, 200)] * 4
    made = {s.folder: s for s in ms.subscriptions.of_mailbox(REP)}
    assert made.keys() == {"inbox", "sentitems"}
    rows = _rows(app)
    for folder, subscription in made.items():
        assert subscription.resource == resource_for(REP, folder)
        assert subscription.change_types == {"created", "updated"}
        assert subscription.notification_url == subscription.lifecycle_url == graph.url
        assert subscription.expires == T0 + LIFETIME <= T0 + timedelta(minutes=MAX_MINUTES)
        row = rows[folder]
        assert (row.state, row.external_id) == (push.ACTIVE_WATCH, subscription.id)
        assert row.expires_at == T0 + LIFETIME and row.renew_at == T0 + RENEW_EVERY
        # The clientState is random per subscription, and stored only encrypted.
        assert row.secret is not None and subscription.client_state not in row.secret
        assert app.cipher.decrypt(row.secret) == subscription.client_state
    assert made["inbox"].client_state != made["sentitems"].client_state
    until = f"{T0 + LIFETIME:%Y-%m-%d %H:%M}"
    assert _accounts(config)[REP] == f"subscribed (2 folders) until {until} UTC"
    assert graph.keeper.check().subscribed == 0  # nothing due: no call to Graph


@BOTH_STORES
def test_new_mail_in_a_subscribed_folder_wakes_only_its_mailbox(
    graph: Push, ms: MicrosoftSandbox
) -> None:
    graph.keeper.check()
    _mail(ms)
    _deliver(ms)
    assert graph.woken == [graph.ids[REP]]
    (delivery,) = ms.subscriptions.deliveries
    assert (delivery.kind, delivery.status) == ("created", 202)
    ms.add_folder(REP, "archive-2026")
    _mail(ms, folder="archive-2026", n=2)  # a folder maillink does not sync: no notification
    _deliver(ms)
    assert graph.woken == [graph.ids[REP]]


@BOTH_STORES
def test_a_notification_with_a_wrong_client_state_or_subscription_is_ignored(
    graph: Push, app: App
) -> None:
    graph.keeper.check()
    inbox = _rows(app)["inbox"]
    item = {
        "subscriptionId": inbox.external_id,
        "changeType": "created",
        "clientState": "guessed",
        "resource": "Users/x/Messages/y",
    }
    assert _post(graph.url, {"value": [item]}).status_code == 202
    assert _post(graph.url, {"value": [{**item, "clientState": None}]}).status_code == 202
    unknown = {**item, "subscriptionId": "not-ours"}
    assert _post(graph.url, {"value": [unknown]}).status_code == 202
    assert graph.woken == []
    assert inbox.secret is not None
    genuine = {**item, "clientState": app.cipher.decrypt(inbox.secret)}
    assert _post(graph.url, {"value": [genuine, item]}).status_code == 202
    assert graph.woken == [graph.ids[REP]]


def test_the_endpoint_echoes_the_handshake_and_refuses_malformed_bodies(graph: Push) -> None:
    token = "Validation: <b>reachability</b> & Request-Id: 1f2e"
    answer = requests.post(graph.url, params={"validationToken": token}, timeout=10)
    assert (answer.status_code, answer.text) == (200, token)
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert _post(graph.url, {"value": "nope"}).status_code == 400
    assert _post(graph.url, {"value": [{"changeType": "created"}]}).status_code == 400
    assert requests.post(graph.url, data=b"{not json", timeout=10).status_code == 400
    big = {"value": [], "pad": "x" * MAX_BODY_BYTES}
    assert _post(graph.url, big).status_code == 413
    assert graph.woken == []


@BOTH_STORES
def test_subscriptions_are_renewed_a_day_later_long_before_they_expire(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock
) -> None:
    graph.keeper.check()
    before = {s.id for s in ms.subscriptions.all_live()}
    clock.advance(RENEW_EVERY - timedelta(minutes=1))
    assert graph.keeper.check().subscribed == 0
    assert ms.meter.requests["graph.subscriptions.patch"] == 0
    clock.advance(timedelta(minutes=2))
    assert graph.keeper.check().subscribed == 4
    assert ms.meter.requests["graph.subscriptions.patch"] == 4
    assert ms.meter.requests["graph.subscriptions.create"] == 4  # none made again
    assert {s.id for s in ms.subscriptions.all_live()} == before
    for subscription in ms.subscriptions.all_live():
        assert subscription.expires == clock.at + LIFETIME
    row = _rows(app)["inbox"]
    assert row.expires_at == clock.at + LIFETIME and row.renew_at == clock.at + RENEW_EVERY


@BOTH_STORES
def test_pausing_deletes_the_subscriptions_and_resuming_makes_them_again(
    graph: Push, app: App, ms: MicrosoftSandbox, config: Path
) -> None:
    graph.keeper.check()
    ran = CliRunner().invoke(cli, ["--config", str(config), "accounts", "pause", REP])
    assert ran.exit_code == 0, ran.output
    assert ms.subscriptions.of_mailbox(REP) == []
    assert len(ms.subscriptions.of_mailbox(OTHER)) == 2
    assert ms.meter.requests["graph.subscriptions.delete"] == 2
    assert {row.state for row in _rows(app).values()} == {push.STOPPED}
    assert _accounts(config)[REP] == "off"
    assert graph.keeper.check().subscribed == 0  # a paused mailbox gets none
    CliRunner().invoke(cli, ["--config", str(config), "accounts", "resume", REP])
    assert graph.keeper.check().subscribed == 2
    assert len(ms.subscriptions.of_mailbox(REP)) == 2


def test_removing_a_mailbox_deletes_its_subscriptions_before_its_tokens_are_forgotten(
    graph: Push, ms: MicrosoftSandbox, config: Path
) -> None:
    graph.keeper.check()
    ran = CliRunner().invoke(cli, ["--config", str(config), "accounts", "remove", REP])
    assert ran.exit_code == 0, ran.output
    assert ms.subscriptions.of_mailbox(REP) == []
    assert len(ms.subscriptions.of_mailbox(OTHER)) == 2
    assert REP not in _accounts(config)


def test_a_mailbox_paused_elsewhere_has_its_subscriptions_deleted_by_the_check(
    graph: Push, app: App, ms: MicrosoftSandbox
) -> None:
    graph.keeper.check()
    with app.store.transaction() as conn:
        accounts.set_status(conn, graph.ids[OTHER], accounts.PAUSED)
    assert graph.keeper.check().stopped == 2
    assert ms.subscriptions.of_mailbox(OTHER) == [] and len(ms.subscriptions.of_mailbox(REP)) == 2


@BOTH_STORES
def test_subscription_removed_makes_the_subscription_again(
    graph: Push, app: App, ms: MicrosoftSandbox
) -> None:
    graph.keeper.check()
    old = _rows(app)["inbox"]
    assert old.external_id is not None
    ms.subscriptions.lifecycle(old.external_id, "subscriptionRemoved")
    _deliver(ms)
    graph.keeper.join(timeout=WAIT)
    _until(lambda: _rows(app)["inbox"].state == push.ACTIVE_WATCH)
    new = _rows(app)["inbox"]
    assert new.external_id not in (None, old.external_id)
    assert {s.folder for s in ms.subscriptions.of_mailbox(REP)} == {"inbox", "sentitems"}
    assert ms.subscriptions.live(old.external_id) is None
    assert graph.woken == []  # nothing to sync for it: only the subscription is made again
    _mail(ms)
    _deliver(ms)
    assert graph.woken == [graph.ids[REP]]  # the new subscription notifies


def test_reauthorization_required_renews_the_subscription_now(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock
) -> None:
    graph.keeper.check()
    clock.advance(timedelta(hours=2))  # well before the renewal a day later
    sent = _rows(app)["sentitems"]
    assert sent.external_id is not None
    ms.subscriptions.lifecycle(sent.external_id, "reauthorizationRequired")
    _deliver(ms)
    graph.keeper.join(timeout=WAIT)
    _until(lambda: ms.meter.requests["graph.subscriptions.patch"] == 1)
    live = ms.subscriptions.live(sent.external_id)
    assert live is not None and live.expires == clock.at + LIFETIME
    assert _rows(app)["sentitems"].renew_at == clock.at + RENEW_EVERY
    assert ms.meter.requests["graph.subscriptions.create"] == 4


def test_a_renewal_encrypts_the_client_state_again_under_the_newest_key(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock
) -> None:
    graph.keeper.check()
    old_key, new_key = app.credentials.encryption_keys[0], TokenCipher.generate_key()
    app.__dict__["cipher"] = TokenCipher([new_key, old_key])  # `maillink keys` rotated
    clock.advance(RENEW_EVERY)
    assert graph.keeper.check().subscribed == 4
    assert ms.meter.requests["graph.subscriptions.create"] == 4  # renewed, not made again
    by_folder = {s.folder: s for s in ms.subscriptions.of_mailbox(REP)}
    for folder, row in _rows(app).items():
        assert row.secret is not None
        assert TokenCipher([new_key]).decrypt(row.secret) == by_folder[folder].client_state
    # A clientState under a key since removed is not renewed: a new subscription replaces it.
    lost = _rows(app)["inbox"]
    assert lost.external_id is not None and lost.expires_at is not None
    with app.store.transaction() as conn:
        push.made(
            conn,
            lost.id,
            external_id=lost.external_id,
            target=graph.url,
            secret=TokenCipher([TokenCipher.generate_key()]).encrypt("gone"),
            expires_at=lost.expires_at,
            renew_at=clock.at,
            now=clock.at,
        )
    assert graph.keeper.check().subscribed == 1
    assert ms.meter.requests["graph.subscriptions.create"] == 5
    assert _rows(app)["inbox"].external_id != lost.external_id


@BOTH_STORES
def test_a_missed_event_wakes_the_mailbox_and_its_round_finds_the_mail(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock
) -> None:
    from maillink.daemon.loop import Daemon

    daemon = Daemon(app, should_stop=threading.Event().is_set, workers=1)
    with app.store.transaction() as conn:
        leases.ensure(conn, daemon.clock())
    graph.keeper.check()
    (lease,) = daemon.rounds.acquire(limit=1, account_ids=[graph.ids[REP]], due_only=False)
    daemon._round(lease)  # the first round: the delta cursors are made
    assert _stored(app, graph.ids[REP]) == 0
    with ms.subscriptions._lock:  # Graph lost the notification of this message
        subscriptions, ms.subscriptions._subscriptions = ms.subscriptions._subscriptions, {}
    _mail(ms)
    with ms.subscriptions._lock:
        ms.subscriptions._subscriptions = subscriptions
    _deliver(ms)
    assert graph.woken == []
    inbox = _rows(app)["inbox"]
    assert inbox.external_id is not None
    ms.subscriptions.lifecycle(inbox.external_id, "missed")
    _deliver(ms)
    assert graph.woken == [graph.ids[REP]]
    for account_id in graph.woken:
        daemon.wake(account_id)
    (lease,) = daemon.rounds.acquire(limit=1, account_ids=[graph.ids[REP]])
    daemon._round(lease)  # a normal delta round: the cursor stays the truth
    with app.store.engine.connect() as conn:
        account = accounts.get(conn, REP)
    assert account is not None and account.last_error is None
    assert _stored(app, graph.ids[REP]) == 1


def _stored(app: App, account_id: int) -> int:
    from maillink.store.read_models import messages_by_reason

    with app.store.engine.connect() as conn:
        return sum(n for _id, _reason, n in messages_by_reason(conn, [account_id]))


def test_an_endpoint_that_does_not_echo_the_handshake_gets_no_subscription(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock, config: Path
) -> None:
    keeper = GraphSubscriptions(app, graph.url.replace("/push/graph", "/healthz"), clock=clock)
    assert keeper.check().failed == 4
    assert ms.subscriptions.all_live() == []
    row = _rows(app)["inbox"]
    assert row.state == push.FAILED and row.renew_at == T0 + RETRY_AFTER
    assert "validation" in (row.last_error or "").lower()
    assert _accounts(config)[REP].startswith("failed (inbox): ")
    clock.advance(RETRY_AFTER)
    assert graph.keeper.check().subscribed == 4  # the right URL, again after RETRY_AFTER


def test_the_sandbox_enforces_the_longest_lifetime(graph: Push, ms: MicrosoftSandbox) -> None:
    token = ms.access_token(REP)
    body = {
        "changeType": "created",
        "notificationUrl": graph.url,
        "resource": resource_for(REP, "inbox"),
        "expirationDateTime": iso(T0 + timedelta(minutes=MAX_MINUTES + 1)),
        "clientState": "x",
    }
    url = f"{ms.graph_url}/subscriptions"
    headers = {"Authorization": f"Bearer {token}"}
    refused = requests.post(url, json=body, headers=headers, timeout=10)
    assert refused.status_code == 400
    assert f"{MAX_MINUTES} minutes" in refused.json()["error"]["message"]
    body["expirationDateTime"] = iso(T0 + timedelta(minutes=MAX_MINUTES))
    made = requests.post(url, json=body, headers=headers, timeout=10)
    assert made.status_code == 201, made.text
    listed = requests.get(url, headers=headers, timeout=10).json()["value"]
    assert [s["id"] for s in listed] == [made.json()["id"]]


def test_turning_notifications_off_deletes_the_subscriptions(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock
) -> None:
    graph.keeper.check()
    assert GraphSubscriptions(app, None, clock=clock).check().stopped == 4
    assert ms.subscriptions.all_live() == []


def test_the_daemon_keeps_the_subscriptions_from_its_loop(
    graph: Push, config: Path, ms: MicrosoftSandbox, clock: Clock
) -> None:
    from maillink.daemon.loop import Daemon

    settings = load_settings(config, env={})
    assert settings.microsoft.notification_url == graph.url
    opened = App(settings)
    try:
        daemon = Daemon(opened, should_stop=lambda: True, clock=clock)
        assert daemon.graph_subscriptions.notification_url == graph.url
        daemon.graph_subscriptions.tick()
        daemon.graph_subscriptions.join(timeout=WAIT)
        assert len(ms.subscriptions.all_live()) == 4
    finally:
        opened.close()


def test_a_notification_url_must_be_https_or_loopback(tmp_path: Path, config: Path) -> None:
    text = config.read_text()
    for url, error in (
        ("http://crm.example/push/graph", "notification_url"),
        ("https://crm.example/push/graph?x=1", "query"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace("[microsoft]\n", f'[microsoft]\nnotification_url = "{url}"\n'))
        with pytest.raises(ConfigError, match=error):
            load_settings(bad, env={})
    good = tmp_path / "good.toml"
    good.write_text(
        text.replace(
            "[microsoft]\n", '[microsoft]\nnotification_url = "https://m.example/push/graph"\n'
        )
    )
    settings = load_settings(good, env={})
    assert settings.microsoft.notification_url == "https://m.example/push/graph"


@BOTH_STORES
def test_a_changed_notification_url_re_points_every_subscription_at_the_next_check(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock
) -> None:
    graph.keeper.check()
    old = {folder: row.external_id for folder, row in _rows(app).items()}
    assert {row.target for row in _rows(app).values()} == {graph.url}
    moved = graph.url.replace("127.0.0.1", "localhost")  # the same endpoint, another URL
    keeper = GraphSubscriptions(app, moved, clock=clock)
    clock.advance(timedelta(hours=1))  # long before the renewal: the new URL alone makes it due

    assert keeper.check().made == 4
    assert ms.meter.requests["graph.subscriptions.delete"] == 4  # the old ones, at Graph
    assert ms.meter.requests["graph.subscriptions.patch"] == 0
    assert {s.notification_url for s in ms.subscriptions.all_live()} == {moved}
    assert {s.lifecycle_url for s in ms.subscriptions.all_live()} == {moved}
    for folder, row in _rows(app).items():
        assert row.state == push.ACTIVE_WATCH and row.target == moved
        assert row.external_id not in (None, old[folder])
        assert ms.subscriptions.live(old[folder] or "") is None
    assert keeper.check().made == 0  # pointed where configured: nothing due
    _mail(ms)
    _deliver(ms)
    assert graph.woken == [graph.ids[REP]]  # the new subscription notifies the new URL


def test_a_failed_re_point_waits_for_its_retry_instead_of_calling_graph_at_every_check(
    graph: Push, app: App, ms: MicrosoftSandbox, clock: Clock
) -> None:
    graph.keeper.check()
    wrong = graph.url.replace("/push/graph", "/healthz")  # answers no handshake
    keeper = GraphSubscriptions(app, wrong, clock=clock)
    assert keeper.check().failed == 4
    created = ms.meter.requests["graph.subscriptions.create"]
    assert keeper.check().made + keeper.check().failed == 0  # not before RETRY_AFTER
    assert ms.meter.requests["graph.subscriptions.create"] == created
    clock.advance(RETRY_AFTER)
    assert graph.keeper.check().made == 4  # back to the right URL: made again there
    assert {s.notification_url for s in ms.subscriptions.all_live()} == {graph.url}


@BOTH_STORES
def test_a_row_made_for_another_target_is_due_at_once_and_a_failed_one_at_its_retry(
    app: App,
) -> None:
    kind, folders = push.GRAPH_SUBSCRIPTION, ("inbox",)
    with app.store.transaction() as conn:
        account = accounts.upsert(conn, REP, "microsoft", "t", "s")
        push.ensure(conn, kind, folders, T0)
        (row,) = push.due(conn, kind, T0, folders, "https://a.example/push/graph")
        push.made(
            conn,
            row.id,
            external_id="sub-1",
            target="https://a.example/push/graph",
            expires_at=T0 + LIFETIME,
            renew_at=T0 + RENEW_EVERY,
            now=T0,
            secret="x",
        )
    later = T0 + timedelta(minutes=1)
    with app.store.engine.connect() as conn:
        assert push.due(conn, kind, later, folders, "https://a.example/push/graph") == []
        (moved,) = push.due(conn, kind, later, folders, "https://b.example/push/graph")
    assert moved.account_id == account.id and moved.target == "https://a.example/push/graph"
    with app.store.transaction() as conn:
        push.failed(conn, moved.id, error="refused", retry_at=T0 + RETRY_AFTER, now=later)
        assert push.due(conn, kind, later, folders, "https://b.example/push/graph") == []
        (retried,) = push.due(conn, kind, T0 + RETRY_AFTER, folders, "https://b.example/push/graph")
    assert retried.live and retried.external_id == "sub-1"
