"""HubSpot through a public app: the consent (state, PKCE, loopback redirect), the grant kept
encrypted in the store, access tokens refreshed on demand, and one clear error when HubSpot
refuses the refresh. Real HTTP against the HubSpot sandbox's OAuth endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from maillink.app import App
from maillink.cli import main
from maillink.config import load_settings
from maillink.crm import hubspot_oauth
from maillink.crm.base import CRMAuthError
from maillink.crm.hubspot import HubSpotCRM
from maillink.crm.hubspot_oauth import (
    SCOPES,
    HubSpotConnectError,
    OAuthApp,
    OAuthTokens,
    connect_hubspot,
)
from maillink.errors import ConfigError
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.secrets import TokenCipher
from maillink.store.schema import crm_state

KEY = TokenCipher.generate_key()


@pytest.fixture(scope="module")
def server() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox() as running:
        yield running


@pytest.fixture
def sandbox(server: HubSpotSandbox) -> HubSpotSandbox:
    server.reset()
    return server


def _oauth_app(sandbox: HubSpotSandbox, secret: str | None = None) -> OAuthApp:
    return OAuthApp(
        sandbox.client_id,
        secret or sandbox.client_secret,
        f"{sandbox.url}/oauth/authorize",
        f"{sandbox.url}/oauth/v3/token",
    )


class Browser:
    """The admin's browser: opens the consent page and follows the redirects (the sandbox
    installs the app at once); keeps what it was sent to."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        requests.get(url, timeout=10)
        return True


def _workspace(folder: Path, sandbox: HubSpotSandbox) -> Path:
    config = folder / "maillink.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{folder / "m.db"}"\n\n'
        f'[crm]\nkind = "hubspot"\nbase_url = "{sandbox.url}"\n'
    )
    credentials = {
        "hubspot": {
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "auth_url": f"{sandbox.url}/oauth/authorize",
            "token_url": f"{sandbox.url}/oauth/v3/token",
        },
        "encryption_key": KEY,
    }
    (folder / "credentials.json").write_text(json.dumps(credentials))
    return config


def _run(config: Path, *args: str) -> int:
    try:
        main(["--config", str(config), *args])
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


@pytest.fixture
def connected(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[App]:
    """`maillink crm connect hubspot` run, then the App of that workspace."""
    monkeypatch.setattr(hubspot_oauth.webbrowser, "open", Browser())
    config = _workspace(tmp_path, sandbox)
    assert _run(config, "crm", "connect", "hubspot", "--port", "0") == 0
    said = capsys.readouterr()
    assert "connected HubSpot (account " in said.out and "code=" not in said.out + said.err
    app = App(load_settings(config))
    yield app
    app.close()


# -- the consent ---------------------------------------------------------------------------------


def test_connect_asks_least_privilege_scopes_with_state_and_pkce(
    sandbox: HubSpotSandbox,
) -> None:
    browser = Browser()
    grant = connect_hubspot(_oauth_app(sandbox), port=0, announce=browser)
    [url] = browser.urls
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["scope"].split() == list(SCOPES)
    assert not any(s.endswith(".write") and "contacts" not in s for s in SCOPES)
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32
    assert urlsplit(query["redirect_uri"]).hostname == "localhost"
    assert grant.refresh_token.startswith("hs-rt-") and set(grant.scopes) == set(SCOPES)
    assert "hs-rt-" not in repr(grant)


def test_the_cli_stores_the_refresh_token_encrypted_and_the_adapter_uses_it(
    connected: App, sandbox: HubSpotSandbox
) -> None:
    refresh_token = list(sandbox.oauth.refresh)[-1]  # this test's connect
    with connected.store.engine.connect() as conn:
        stored = " ".join(str(row.value) for row in conn.execute(select(crm_state)))
    assert refresh_token not in stored
    assert not (connected.settings.credentials_path.read_text()).count(refresh_token)
    ann = sandbox.add_contact("ann@example.com", "Ann", "Lee")
    crm = connected.crm
    assert isinstance(crm, HubSpotCRM)
    assert [p.id for p in crm.search_persons("ann@example.com")] == [ann]
    # `crm connect` read the email key's property, then the adapter searched: a public app
    assert [r.operation for r in sandbox.received] == ["properties.read", "objects.batch.read"]


def test_a_redirect_with_a_state_this_connection_did_not_send_is_refused(
    sandbox: HubSpotSandbox,
) -> None:
    def forger(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        requests.get(f"{redirect}?code=stolen&state=forged", timeout=10)

    with pytest.raises(HubSpotConnectError, match="state this connection did not send"):
        connect_hubspot(_oauth_app(sandbox), port=0, announce=forger)


def test_a_wrong_client_secret_is_one_line_that_says_so(sandbox: HubSpotSandbox) -> None:
    with pytest.raises(HubSpotConnectError, match="BAD_CLIENT_SECRET"):
        connect_hubspot(_oauth_app(sandbox, "wrong-secret"), port=0, announce=Browser())


def test_a_daemon_before_connect_is_told_to_connect(
    tmp_path: Path, sandbox: HubSpotSandbox
) -> None:
    app = App(load_settings(_workspace(tmp_path, sandbox)))
    try:
        with pytest.raises(CRMAuthError, match="maillink crm connect hubspot"):
            app.crm  # noqa: B018 - building it reads the stored grant
    finally:
        app.close()


def test_connect_without_a_public_app_is_a_configuration_error(
    tmp_path: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _workspace(tmp_path, sandbox)
    (tmp_path / "credentials.json").write_text(
        json.dumps({"hubspot": {"access_token": "pat"}, "encryption_key": KEY})
    )
    assert _run(config, "crm", "connect", "hubspot", "--port", "0") == 2
    assert "client_id and client_secret" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"client_id": "x"}, "hubspot.client_secret is missing"),
        ({"client_secret": "x"}, "hubspot.client_id is missing"),
        ({"client_id": "x", "client_secret": "y", "token_url": "http://a.example"}, "token_url"),
    ],
)
def test_public_app_credentials_mistakes_name_the_key(
    tmp_path: Path, sandbox: HubSpotSandbox, fields: dict[str, Any], fragment: str
) -> None:
    config = _workspace(tmp_path, sandbox)
    (tmp_path / "credentials.json").write_text(json.dumps({"hubspot": fields}))
    with pytest.raises(ConfigError, match=fragment):
        load_settings(config).credentials()


# -- tokens --------------------------------------------------------------------------------------


def test_an_expired_access_token_is_refreshed_once_and_the_call_goes_through(
    connected: App, sandbox: HubSpotSandbox
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann", "Lee")
    crm = connected.crm
    assert isinstance(crm, HubSpotCRM) and isinstance(crm.http.tokens, OAuthTokens)
    crm.search_persons("ann@example.com")
    assert crm.http.tokens.refreshes == 1
    sandbox.oauth.expire_access_tokens()

    assert [p.id for p in crm.search_persons("ann@example.com")] == [ann]
    assert crm.http.tokens.refreshes == 2
    assert crm.requests_made == 3  # the call, its 401, the call again


def test_an_access_token_near_its_expiry_is_refreshed_before_the_call() -> None:
    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    with HubSpotSandbox() as sandbox:
        grant = connect_hubspot(_oauth_app(sandbox), port=0, announce=Browser())
        tokens = OAuthTokens(_oauth_app(sandbox), grant.refresh_token, clock=clock)
        first = tokens.current()
        clock.now = 1800 - 30  # inside the refresh margin
        second = tokens.current()
        assert first != second and tokens.refreshes == 2
        assert tokens.current() == second


def test_a_refused_refresh_is_one_error_that_says_reconnect(
    connected: App, sandbox: HubSpotSandbox
) -> None:
    crm = connected.crm
    assert isinstance(crm, HubSpotCRM)
    crm.search_persons("ann@example.com")
    refresh_token = list(sandbox.oauth.refresh)[-1]  # this test's connect
    sandbox.oauth.revoke(refresh_token)  # the app was uninstalled
    sandbox.oauth.expire_access_tokens()
    with pytest.raises(CRMAuthError) as error:
        crm.search_persons("ann@example.com")
    message = str(error.value)
    assert "reconnect HubSpot: maillink crm connect hubspot" in message
    assert "BAD_REFRESH_TOKEN" in message and "\n" not in message
    assert refresh_token not in message


def test_keys_rotate_re_encrypts_the_stored_grant(connected: App, tmp_path: Path) -> None:
    with connected.store.engine.connect() as conn:
        before = conn.execute(
            select(crm_state.c.value).where(crm_state.c.name == hubspot_oauth.STATE_NAME)
        ).scalar_one()
    credentials = json.loads((tmp_path / "credentials.json").read_text())
    new_key = TokenCipher.generate_key()
    credentials["encryption_key"] = f"{new_key},{KEY}"
    (tmp_path / "credentials.json").write_text(json.dumps(credentials))
    app = App(load_settings(tmp_path / "maillink.toml"))
    try:
        app.rotate_keys()
        with app.store.engine.connect() as conn:
            after = conn.execute(
                select(crm_state.c.value).where(crm_state.c.name == hubspot_oauth.STATE_NAME)
            ).scalar_one()
        assert after != before
        assert TokenCipher([new_key]).decrypt(after) == TokenCipher([KEY]).decrypt(before)
    finally:
        app.close()


def test_the_granted_scopes_are_enough_for_every_call_of_the_adapter(
    connected: App, sandbox: HubSpotSandbox
) -> None:
    from maillink.crm.activity import draft_for
    from maillink.model import Address, Direction, ItemKind, ItemRef, Message

    sandbox.add_owner("alice@acme.example", "Alice", "Rep")
    acme = sandbox.add_company("Customer Inc")
    ann = sandbox.add_contact("ann@example.com", "Ann", "Lee", company_id=acme)
    created = datetime.now(UTC) - timedelta(days=30)
    deal = sandbox.add_deal("Licences", ann, add_time=created)
    sandbox.add_lead("Upsell", ann, add_time=created)
    crm = connected.crm
    assert isinstance(crm, HubSpotCRM)
    assert crm.users() and crm.search_persons("ann@example.com")
    assert {i.ref.kind for i in crm.items_of_person(ann)} == {ItemKind.DEAL, ItemKind.LEAD}
    message = Message(
        account="alice@acme.example",
        provider_id="m1",
        thread_key="t1",
        message_id="m1@example.com",
        date=datetime.now(UTC),
        direction=Direction.INBOUND,
        sender=Address("ann@example.com", "Ann Lee"),
        to=(Address("alice@acme.example"),),
        subject="Quote",
    )
    draft = draft_for(message, (ann,), (ItemRef(ItemKind.DEAL, str(deal)),))
    email_id = crm.create_activity(draft)
    assert crm.find_activity(draft.key, ann) == email_id


def test_without_a_browser_the_url_is_a_line_of_its_own_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hubspot_oauth._announcer(open_browser=False)("https://app.hubspot.com/oauth/authorize?x=1")
    said = capsys.readouterr()
    assert said.out == "https://app.hubspot.com/oauth/authorize?x=1\n"
    assert "Open this URL" in said.err
