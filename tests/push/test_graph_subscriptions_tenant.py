"""Graph change notifications for mailboxes connected tenant-wide, against the Microsoft sandbox
through MSAL's client credentials and real HTTP: the subscription is made with the app's token on
`/users/{directory id}/…` (Graph accepts application permissions there), a notification wakes
the mailbox, and without Mail.ReadBasic.All (or outside an application access policy) Graph
refuses it and the keeper records the failure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.push.conftest import T0, Clock

from maillink.app import App
from maillink.config import load_settings
from maillink.ops.metrics import Metrics
from maillink.ops.server import OpsContext, OpsServer, create_ops_app
from maillink.push.graph_subscriptions import GraphNotifications, GraphSubscriptions, resource_for
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts, push

DOMAIN = "contoso.example"
SECRET = "sandbox-app-secret"
TEAM = [f"rep{i}@{DOMAIN}" for i in range(3)]
APP_PERMISSIONS = ("Mail.ReadBasic.All", "User.Read.All")


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox(client_secret=SECRET) as sandbox:
        for email in TEAM:
            sandbox.add_mailbox(email)
        sandbox.grant_app_permissions(*APP_PERMISSIONS)
        yield sandbox


@pytest.fixture
def clock(ms: MicrosoftSandbox) -> Clock:
    moved = Clock()
    ms.subscriptions.clock = moved
    return moved


@pytest.fixture
def config(tmp_path: Path, ms: MicrosoftSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)  # the sandbox's throwaway CA
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        path = write_workspace(tmp_path, google, pipedrive, microsoft=ms, internal_domains=[DOMAIN])
        credentials = tmp_path / "credentials.json"
        data = json.loads(credentials.read_text())
        data["microsoft"]["client_secret"] = SECRET
        credentials.write_text(json.dumps(data))
        yield path


@dataclass
class Push:
    app: App
    url: str
    keeper: GraphSubscriptions
    ids: dict[str, int]
    woken: list[int] = field(default_factory=list)


@pytest.fixture
def tenant(config: Path, ms: MicrosoftSandbox, clock: Clock) -> Iterator[Push]:
    """The team connected tenant-wide (`maillink connect microsoft --tenant-wide`'s code), and
    the daemon's `/push/graph` endpoint with its subscriptions' keeper."""
    from maillink.onboarding.microsoft_tenant import connect_tenant

    app = App(load_settings(config, env={}))
    assert len(connect_tenant(app).added) == len(TEAM)
    ids = {a.email: a.id for a in app.store_accounts(active_only=False)}
    woken: list[int] = []
    ctx = OpsContext(store=app.store, metrics=Metrics())
    server = OpsServer(create_ops_app(ctx), "127.0.0.1", 0).start()
    url = f"{server.url}/push/graph"
    keeper = GraphSubscriptions(app, url, clock=clock)
    ctx.graph_notifications = GraphNotifications(
        app.store, app.cipher, wake=woken.append, renew=keeper.poke, clock=clock
    )
    try:
        yield Push(app, url, keeper, ids, woken)
    finally:
        keeper.join(timeout=20.0)
        server.stop()
        app.close()


def _rows(app: App, email: str) -> list[push.Subscription]:
    with app.store.engine.connect() as conn:
        account = accounts.get(conn, email)
        assert account is not None and account.connected_via == "tenant"
        return push.for_account(conn, account.id, push.GRAPH_SUBSCRIPTION)


def test_a_tenant_mailbox_gets_its_subscriptions_with_the_app_token(
    tenant: Push, ms: MicrosoftSandbox
) -> None:
    result = tenant.keeper.check()
    assert (result.subscribed, result.failed) == (2 * len(TEAM), 0)  # inbox and sentitems
    rep = TEAM[1]
    made = {s.folder: s for s in ms.subscriptions.of_mailbox(rep)}
    assert made.keys() == {"inbox", "sentitems"}
    for folder, subscription in made.items():
        # Read as its rounds read it: /users/{directory id}, with the app's own token.
        assert subscription.resource == resource_for(ms.user_id(rep), folder)
        assert subscription.by_app
    rows = _rows(tenant.app, rep)
    assert {row.state for row in rows} == {push.ACTIVE_WATCH}
    assert {row.external_id for row in rows} == {s.id for s in made.values()}
    assert ms.meter.requests["identity.token"] == 1  # one app token for every mailbox


def test_new_mail_in_a_tenant_mailbox_wakes_it(tenant: Push, ms: MicrosoftSandbox) -> None:
    tenant.keeper.check()
    rep = TEAM[2]
    ms.add_message(
        rep,
        "inbox",
        internet_message_id="<t1@client.example>",
        subject="Quote",
        sender="ana@client.example",
        to=[rep],
        received=T0,
    )
    ms.subscriptions.wait()
    assert tenant.woken == [tenant.ids[rep]]
    (delivery,) = ms.subscriptions.deliveries
    assert (delivery.kind, delivery.status) == ("created", 202)


def test_without_mail_read_basic_all_graph_refuses_the_subscription(
    tenant: Push, ms: MicrosoftSandbox
) -> None:
    ms.revoke_app_permissions("Mail.ReadBasic.All")
    result = tenant.keeper.check()
    assert (result.subscribed, result.failed) == (0, 2 * len(TEAM))
    assert ms.subscriptions.all_live() == []
    rows = _rows(tenant.app, TEAM[0])
    assert {row.state for row in rows} == {push.FAILED}
    assert all("403" in (row.last_error or "") for row in rows), rows


def test_an_application_access_policy_keeps_the_app_out_of_other_mailboxes(
    tenant: Push, ms: MicrosoftSandbox
) -> None:
    sales = ms.add_group("Sales", TEAM[:1])
    ms.restrict_app_access(sales)
    result = tenant.keeper.check()
    assert (result.subscribed, result.failed) == (2, 2 * (len(TEAM) - 1))
    assert {s.mailbox for s in ms.subscriptions.all_live()} == {TEAM[0]}


def test_the_app_renews_and_deletes_its_own_subscriptions(
    tenant: Push, ms: MicrosoftSandbox
) -> None:
    tenant.keeper.check()
    rep = TEAM[0]
    assert tenant.keeper.stop_account(_account(tenant.app, rep)) is None
    assert ms.subscriptions.of_mailbox(rep) == []
    assert len(ms.subscriptions.all_live()) == 2 * (len(TEAM) - 1)


def _account(app: App, email: str) -> accounts.Account:
    with app.store.engine.connect() as conn:
        found = accounts.get(conn, email)
    assert found is not None
    return found
