"""Connecting Microsoft 365 from the browser: MSAL's auth-code flow with PKCE and a one-time
state bound to the session, the registered redirect URI, whose mailbox a rep may connect, and a
tenant that leaves the consent to an admin. Real HTTP to the Microsoft sandbox throughout."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from tests.web.microsoft_support import (
    CALLBACK_PATH,
    at_microsoft,
    connect_microsoft_via_web,
    microsoft_for,
    start,
)
from tests.web.support import (
    ADMIN,
    ANN,
    BOB,
    PUBLIC_URL,
    Team,
    connect_via_web,
    csrf,
    sign_in,
    text,
)

from maillink.app import App
from maillink.config import load_settings
from maillink.onboarding.microsoft_msal import SCOPES
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.store import accounts, users
from maillink.web.factory import create_app
from maillink.web.settings import WebSettings

CALLBACK = PUBLIC_URL + CALLBACK_PATH
# The web sign-in's answer comes in the query (docs/web-app.md says why), which MSAL warns about.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post':UserWarning")


@pytest.fixture
def ms(team: Team, monkeypatch: pytest.MonkeyPatch) -> Iterator[MicrosoftSandbox]:
    with microsoft_for(team, monkeypatch, PUBLIC_URL) as sandbox:
        yield sandbox


@pytest.fixture
def app(team: Team, ms: MicrosoftSandbox) -> Iterator[App]:
    maillink = App(load_settings(str(team.config)))
    yield maillink
    maillink.close()


def _session(web: Flask, client: Any) -> dict[str, Any]:
    cookie = client.get_cookie("maillink_session")
    assert cookie is not None
    serializer = web.session_interface.get_signing_serializer(web)  # type: ignore[attr-defined]
    return dict(serializer.loads(cookie.value))


def _refresh_tokens(app: App, email: str) -> list[str]:
    cache = json.loads(app.tokens(app.account(email))["token_cache"])
    return [str(entry["secret"]) for entry in cache["RefreshToken"].values()]


def _nothing_stored(app: App) -> bool:
    with app.store.engine.connect() as conn:
        return accounts.all_accounts(conn) == []


def test_connecting_stores_the_token_cache_encrypted_owned_and_synced(
    web: Flask, app: App, ms: MicrosoftSandbox, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    account_id = connect_microsoft_via_web(client, web, ms, ANN)
    page = text(client.get(f"/mailboxes/{account_id}"))
    assert ANN in page and "Up to date" in page and "is connected; its first sync" in page
    progress = client.get(f"/mailboxes/{account_id}/progress").get_json()
    assert progress["done"] and progress["messages"] == 3 and progress["waiting"] == 1
    with app.store.engine.connect() as conn:
        account = accounts.get(conn, ANN)
        owner = users.owner_of(conn, account_id)
        user = users.get_by_email(conn, ANN)
    assert account is not None and account.provider == "microsoft"
    assert account.status == accounts.ACTIVE and user is not None and owner == user.id
    assert set(account.scopes.split()) == set(SCOPES)  # Mail.ReadBasic User.Read, no more
    # stored as `maillink connect microsoft` stores it: MSAL's cache, encrypted
    tokens = app.tokens(app.account(ANN))
    assert set(tokens) == {"token_cache", "home_account_id", "scopes"}
    (refresh,) = _refresh_tokens(app, ANN)
    assert refresh.startswith("sbx-rt-") and refresh not in str(account.token)
    app.store.close()
    raw = b"".join(p.read_bytes() for p in team.folder.glob("maillink.db*"))
    assert refresh.encode() not in raw


def test_the_sign_in_carries_pkce_s256_a_state_and_the_registered_redirect_uri(
    web: Flask, app: App, ms: MicrosoftSandbox
) -> None:
    client = sign_in(web, app, ANN)
    begun = start(client)
    assert begun.status_code == 303
    url = urlsplit(begun.headers["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{ms.authority}/oauth2/v2.0/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["redirect_uri"] == CALLBACK and query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert set(query["scope"].split()) == {*SCOPES, "openid", "profile", "offline_access"}
    assert query["login_hint"] == ANN  # a rep signs in as themself
    assert len(query["state"]) >= 16
    # the session holds the state and MSAL's flow encrypted: the verifier is in no cookie
    session = _session(web, client)
    pending = session["oauth_microsoft"]
    assert set(pending) == {"state", "at", "flow"} and pending["state"] == query["state"]
    flow = json.loads(app.cipher.decrypt(pending["flow"]))
    verifier = flow["code_verifier"]
    assert len(verifier) >= 43 and verifier not in json.dumps(session)
    cookie = client.get_cookie("maillink_session")
    assert cookie is not None and verifier not in cookie.value
    assert verifier not in begun.get_data(as_text=True) + str(begun.headers)
    assert flow["nonce"] not in json.dumps(session)


def test_the_state_is_one_time_and_bound_to_the_browser_session(
    web: Flask, app: App, ms: MicrosoftSandbox
) -> None:
    client = sign_in(web, app, ANN)
    ms.consent_as = ANN
    callback = at_microsoft(ms, start(client).headers["Location"])
    assert client.get(callback).status_code == 303
    replayed = client.get(callback)
    assert replayed.status_code == 400 and "replayed" in text(replayed)

    # an answer to a sign-in started in another browser session (login CSRF) is refused
    attacker = sign_in(web, app, BOB)
    ms.consent_as = BOB
    stolen = at_microsoft(ms, start(attacker).headers["Location"])
    victim = sign_in(web, app, ADMIN, admin=True)
    start(victim)  # a sign-in of the victim's own is under way
    assert victim.get(stolen).status_code == 400
    assert victim.get(stolen.replace("state=", "state=x", 1)).status_code == 400
    with app.store.engine.connect() as conn:
        assert accounts.get(conn, BOB) is None
    # and without any state at all
    assert client.get(f"{CALLBACK_PATH}?code=abc").status_code == 400


def test_a_redirect_uri_other_than_the_registered_one_is_refused(
    web: Flask, app: App, ms: MicrosoftSandbox, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    named = start(client, redirect_uri="https://evil.example/cb")
    assert named.status_code == 400 and "redirect URI" in text(named)
    # served at a public URL whose callback is not registered: Microsoft refuses the sign-in
    other = create_app(app, WebSettings.build("127.0.0.1", 8080, "http://localhost:9999"))
    elsewhere = other.test_client()
    elsewhere.get(
        "/signin?token=" + _token(app, "carl@acme.example"), base_url="http://localhost:9999"
    )
    page = elsewhere.get("/mailboxes", base_url="http://localhost:9999")
    token = text(page).split('name="csrf_token" value="')[1].split('"')[0]
    begun = elsewhere.post(
        "/connect/microsoft", data={"csrf_token": token}, base_url="http://localhost:9999"
    )
    query = parse_qs(urlsplit(begun.headers["Location"]).query)
    assert query["redirect_uri"] == ["http://localhost:9999" + CALLBACK_PATH]
    refused = requests.get(
        begun.headers["Location"], verify=ms.ca_bundle, allow_redirects=False, timeout=10
    )
    assert refused.status_code == 400 and refused.json()["error_codes"] == [50011]
    other.extensions["maillink"].jobs.stop()


def _token(app: App, email: str, *, admin: bool = False) -> str:
    with app.store.transaction() as conn:
        _user, token = users.issue(conn, email, is_admin=admin)
    return token


def test_reconnecting_a_mailbox_that_needs_reauthorisation(
    web: Flask, app: App, ms: MicrosoftSandbox
) -> None:
    client = sign_in(web, app, ANN)
    account_id = connect_microsoft_via_web(client, web, ms, ANN)
    (old,) = _refresh_tokens(app, ANN)
    ms.revoke(ANN)
    with app.store.transaction() as conn:
        accounts.set_status(conn, account_id, accounts.NEEDS_REAUTH, "invalid_grant")
    page = text(client.get("/mailboxes"))
    assert "Needs re-authorisation" in page and "Reconnect" in page
    begun = start(client, login_hint=ANN)
    assert parse_qs(urlsplit(begun.headers["Location"]).query)["login_hint"] == [ANN]
    ms.consent_as = ANN
    done = client.get(at_microsoft(ms, begun.headers["Location"]))
    assert done.status_code == 303
    job = web.extensions["maillink"].jobs.wait(account_id)
    assert job is not None and not job.first and job.error is None
    assert "Up to date" in text(client.get("/mailboxes"))
    assert _refresh_tokens(app, ANN) != [old]
    assert app.account(ANN).status == accounts.ACTIVE


def test_a_rep_cannot_connect_another_persons_microsoft_mailbox(
    web: Flask, app: App, ms: MicrosoftSandbox
) -> None:
    client = sign_in(web, app, ANN)
    ms.consent_as = BOB  # ann signs in to Microsoft as bob
    answer = client.get(at_microsoft(ms, start(client).headers["Location"]))
    assert answer.status_code == 403
    page = text(answer)
    assert "you can connect only your own mailbox" in page and "Nothing was stored" in page
    assert BOB in page and ANN in page
    assert _nothing_stored(app)


def test_an_admin_can_connect_anyones_microsoft_mailbox(
    web: Flask, app: App, ms: MicrosoftSandbox
) -> None:
    boss = sign_in(web, app, ADMIN, admin=True)
    assert "login_hint" not in parse_qs(urlsplit(start(boss).headers["Location"]).query)
    account_id = connect_microsoft_via_web(boss, web, ms, BOB)
    with app.store.engine.connect() as conn:
        owner = users.owner_of(conn, account_id)
        admin = users.get_by_email(conn, ADMIN)
    assert admin is not None and owner == admin.id
    assert app.account(BOB).provider == "microsoft"


def test_a_rep_cannot_connect_another_persons_gmail_but_an_admin_can(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    team.google.consent_as = BOB
    begun = client.post("/connect/google", data={"csrf_token": csrf(client)})
    consent = requests.get(begun.headers["Location"], allow_redirects=False, timeout=10)
    back = urlsplit(consent.headers["Location"])
    answer = client.get(f"{back.path}?{back.query}")
    assert answer.status_code == 403
    assert "you can connect only your own mailbox" in text(answer)
    assert _nothing_stored(app)
    # nothing was revoked: the consent bob gave is still good for an admin's connection
    boss = sign_in(web, app, ADMIN, admin=True)
    account_id = connect_via_web(boss, web, team.google, BOB)
    assert app.account(BOB).id == account_id


def test_a_tenant_that_blocks_user_consent_gets_admin_consent_then_connects(
    web: Flask, app: App, ms: MicrosoftSandbox
) -> None:
    ms.block_user_consent()
    # a rep: told why, with no admin-consent button
    rep = sign_in(web, app, ANN)
    ms.consent_as = ANN
    blocked = rep.get(at_microsoft(ms, start(rep).headers["Location"]))
    assert blocked.status_code == 403
    page = text(blocked)
    assert "Admin consent needed" in page and "AADSTS90093" in page
    assert "Ask a maillink admin" in page and 'id="grant-admin-consent"' not in page
    assert (
        rep.post("/connect/microsoft/adminconsent", data={"csrf_token": csrf(rep)}).status_code
        == 403
    )
    assert _nothing_stored(app)

    # an admin whose Microsoft sign-in is blocked the same way sees the link as a button
    boss = sign_in(web, app, ADMIN, admin=True)
    assert 'id="admin-consent"' in text(boss.get("/mailboxes"))
    blocked = boss.get(at_microsoft(ms, start(boss).headers["Location"]))
    assert blocked.status_code == 403 and 'id="grant-admin-consent"' in text(blocked)
    token = text(blocked).split('name="csrf_token" value="')[1].split('"')[0]
    begun = boss.post("/connect/microsoft/adminconsent", data={"csrf_token": token})
    assert begun.status_code == 303
    url = urlsplit(begun.headers["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{ms.authority}/adminconsent"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["client_id"] == ms.client_id and query["redirect_uri"] == CALLBACK
    assert query["state"] == _session(web, boss)["oauth_microsoft_admin"]["state"]

    # the tenant administrator approves: the answer reports it
    ms.consent_as = ADMIN
    granted = boss.get(at_microsoft(ms, begun.headers["Location"]), follow_redirects=True)
    assert granted.status_code == 200
    assert f"Admin consent granted for tenant {ms.identity.tenant_id}" in text(granted)
    assert ms.admin_consented

    # now the rep connects her own mailbox
    account_id = connect_microsoft_via_web(rep, web, ms, ANN)
    assert app.account(ANN).id == account_id


def test_admin_consent_that_is_declined_or_replayed_reports_it(
    web: Flask, app: App, ms: MicrosoftSandbox
) -> None:
    boss = sign_in(web, app, ADMIN, admin=True)
    begun = boss.post("/connect/microsoft/adminconsent", data={"csrf_token": csrf(boss)})
    ms.consent_as = None  # the administrator cancels
    callback = at_microsoft(ms, begun.headers["Location"])
    declined = boss.get(callback)
    assert declined.status_code == 403
    assert "Admin consent was not granted (access_denied: AADSTS65004" in text(declined)
    assert boss.get(callback).status_code == 400  # its state was one-time
    ms.consent_as = BOB  # not a tenant administrator
    begun = boss.post("/connect/microsoft/adminconsent", data={"csrf_token": csrf(boss)})
    refused = boss.get(at_microsoft(ms, begun.headers["Location"]))
    assert refused.status_code == 403 and "AADSTS90094" in text(refused)
    assert not ms.admin_consented


def test_a_declined_sign_in_connects_nothing(web: Flask, app: App, ms: MicrosoftSandbox) -> None:
    client = sign_in(web, app, ANN)
    ms.consent_as = None
    answer = client.get(at_microsoft(ms, start(client).headers["Location"]))
    assert answer.status_code == 403
    assert "Microsoft did not grant access (access_denied: AADSTS65004" in text(answer)
    assert _nothing_stored(app)


def test_no_token_in_the_logs_or_pages(
    web: Flask, app: App, ms: MicrosoftSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # The CLI, run in-process by other tests of this worker, leaves "maillink" at WARNING.
    caplog.set_level(logging.DEBUG, logger="maillink")
    client = sign_in(web, app, ANN)
    account_id = connect_microsoft_via_web(client, web, ms, ANN)
    (refresh,) = _refresh_tokens(app, ANN)
    page = text(client.get(f"/mailboxes/{account_id}")) + text(client.get("/mailboxes"))
    assert refresh not in page
    assert caplog.records and refresh not in caplog.text
    assert "connected ann@acme.example (microsoft) from the web" in caplog.text


def test_a_public_client_without_a_secret_connects_too(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No client_secret in credentials.json: MSAL's public client runs the same flow."""
    with microsoft_for(team, monkeypatch, PUBLIC_URL, secret=None) as public:
        app = App(load_settings(str(team.config)))
        web = create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL), testing=True)
        client = sign_in(web, app, ANN)
        account_id = connect_microsoft_via_web(client, web, public, ANN)
        assert app.account(ANN).id == account_id and public.client_secret is None
        web.extensions["maillink"].jobs.stop()
        app.close()
