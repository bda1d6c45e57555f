"""Connecting Gmail from the browser: PKCE, a one-time state bound to the session, exact redirects."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from tests.web.support import (
    ANN,
    BOB,
    PUBLIC_URL,
    Team,
    add_user,
    connect_via_web,
    csrf,
    sign_in,
    text,
    write_credentials,
)

from maillink.app import App
from maillink.config import load_settings
from maillink.secrets import TokenCipher
from maillink.store import accounts, users
from maillink.web.factory import create_app
from maillink.web.settings import WebSettings

CALLBACK = f"{PUBLIC_URL}/oauth/google/callback"


def _start(client: FlaskClient, **form: str) -> Any:
    return client.post("/connect/google", data={"csrf_token": csrf(client), **form})


def _consent(location: str) -> str:
    """What Google's consent page does: redirect back to us; returns our callback path."""
    answer = requests.get(location, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["Location"])
    return f"{back.path}?{back.query}"


def _stored_refresh_token(app: App, email: str) -> str:
    account = app.account(email)
    return str(app.tokens(account)["refresh_token"])


def test_connecting_stores_the_mailbox_encrypted_owned_and_synced(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    account_id = connect_via_web(client, web, team.google, ANN)
    page = text(client.get(f"/mailboxes/{account_id}"))
    assert ANN in page and "Up to date" in page
    progress = client.get(f"/mailboxes/{account_id}/progress").get_json()
    assert progress["done"] and progress["messages"] == 3 and progress["waiting"] == 1
    with app.store.engine.connect() as conn:
        account = accounts.get(conn, ANN)
        owner = users.owner_of(conn, account_id)
        user = users.get_by_email(conn, ANN)
    assert account is not None and account.status == accounts.ACTIVE
    assert user is not None and owner == user.id
    assert account.token and "refresh_token" not in account.token  # Fernet, not JSON
    refresh = _stored_refresh_token(app, ANN)
    assert team.google.issue_refresh_token(ANN) != refresh  # a real grant of the consent


def test_the_consent_request_carries_pkce_s256_a_state_and_the_configured_redirect_uri(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    start = _start(client)
    assert start.status_code == 303
    url = urlsplit(start.headers["Location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == team.google.auth_uri
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["redirect_uri"] == CALLBACK
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43
    assert query["scope"] == "https://www.googleapis.com/auth/gmail.metadata"
    assert query["access_type"] == "offline"
    # the session holds the state, never the PKCE verifier
    cookie = client.get_cookie("maillink_session")
    assert cookie is not None
    session = web.session_interface.get_signing_serializer(web).loads(cookie.value)  # type: ignore[attr-defined]
    assert session["oauth_google"]["state"] == query["state"]
    assert set(session["oauth_google"]) == {"state", "at"}


def test_a_forged_state_is_refused_and_nothing_is_connected(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    team.google.consent_as = ANN
    callback = _consent(_start(client).headers["Location"])
    forged = callback.replace("state=", "state=forged", 1)
    answer = client.get(forged)
    assert answer.status_code == 400
    assert "refused" in text(answer)
    with app.store.engine.connect() as conn:
        assert accounts.get(conn, ANN) is None
    # the state was one-time: the genuine answer is refused too after a forged attempt
    assert client.get(callback).status_code == 400


def test_a_callback_without_state_or_replayed_is_refused(web: Flask, app: App, team: Team) -> None:
    client = sign_in(web, app, ANN)
    team.google.consent_as = ANN
    callback = _consent(_start(client).headers["Location"])
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert client.get(f"/oauth/google/callback?code={code}").status_code == 400
    client2 = sign_in(web, app, ANN)
    callback2 = _consent(_start(client2).headers["Location"])
    assert client2.get(callback2).status_code == 303
    assert client2.get(callback2).status_code == 400  # the same answer again


def test_a_consent_started_in_another_browser_session_is_refused(
    web: Flask, app: App, team: Team
) -> None:
    """Login CSRF: an attacker's consent answer, sent to the victim's browser, is refused."""
    attacker = sign_in(web, app, BOB)
    team.google.consent_as = BOB
    callback = _consent(_start(attacker).headers["Location"])
    victim = sign_in(web, app, ANN)
    _start(victim)  # the victim has a consent of their own under way
    assert victim.get(callback).status_code == 400
    with app.store.engine.connect() as conn:
        assert accounts.get(conn, BOB) is None


def test_a_request_naming_a_foreign_redirect_uri_is_refused(web: Flask, app: App) -> None:
    client = sign_in(web, app, ANN)
    answer = _start(client, redirect_uri="https://evil.example/callback")
    assert answer.status_code == 400
    assert "redirect URI" in text(answer)
    answer = client.post(
        "/connect/google?redirect_uri=https://evil.example/cb",
        data={"csrf_token": csrf(client)},
    )
    assert answer.status_code == 400


def _with_google(team: Team, google: dict[str, Any]) -> App:
    path = team.folder / "credentials.json"
    data = json.loads(path.read_text())
    data["google"] = google
    path.write_text(json.dumps(data))
    return App(load_settings(str(team.config)))


def test_a_web_client_must_list_the_redirect_uri_exactly(team: Team) -> None:
    section = dict(team.google.client_config()["installed"])
    for listed in ([CALLBACK + "/"], ["http://localhost:9999/oauth/google/callback"], []):
        app = _with_google(team, {"web": {**section, "redirect_uris": listed}})
        web = create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL))
        answer = _start(sign_in(web, app, ANN))
        assert answer.status_code == 503
        assert "redirect_uris does not list" in text(answer)
        app.close()
    app = _with_google(team, {"web": {**section, "redirect_uris": [CALLBACK]}})
    web = create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL))
    answer = _start(sign_in(web, app, ANN))
    assert answer.status_code == 303
    assert parse_qs(urlsplit(answer.headers["Location"]).query)["redirect_uri"] == [CALLBACK]
    app.close()


def test_a_desktop_client_cannot_serve_a_public_https_url(app: App) -> None:
    public = "https://maillink.acme.example"
    web = create_app(app, WebSettings.build("127.0.0.1", 8080, public))
    client = web.test_client()
    client.get(f"/signin?token={add_user(app, ANN)}", base_url=public)
    page = text(client.get("/mailboxes", base_url=public))
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    answer = client.post(
        "/connect/google",
        data={"csrf_token": token},
        base_url=public,
        headers={"Referer": f"{public}/mailboxes"},  # Flask-WTF checks it over https
    )
    assert answer.status_code == 503
    assert "loopback redirect URIs only" in text(answer)


def test_a_denied_consent_connects_nothing(web: Flask, app: App, team: Team) -> None:
    client = sign_in(web, app, ANN)
    team.google.consent_as = None
    answer = client.get(_consent(_start(client).headers["Location"]))
    assert answer.status_code == 403
    assert "did not grant access" in text(answer)
    with app.store.engine.connect() as conn:
        assert accounts.all_accounts(conn) == []


def test_no_refresh_token_in_the_database_file_or_the_logs(
    web: Flask, app: App, team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="maillink")  # the in-process CLI may leave it higher
    client = sign_in(web, app, ANN)
    connect_via_web(client, web, team.google, ANN)
    refresh = _stored_refresh_token(app, ANN)
    assert refresh.startswith("1//")
    app.store.close()
    raw = b"".join(p.read_bytes() for p in team.folder.glob("maillink.db*"))
    assert refresh.encode() not in raw
    assert caplog.records  # the debug logs were captured (urllib3, maillink …)
    assert refresh not in caplog.text


def test_reconnecting_a_mailbox_that_needs_reauthorisation(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    account_id = connect_via_web(client, web, team.google, ANN)
    team.google.revoke(ANN)
    with app.store.transaction() as conn:
        accounts.set_status(conn, account_id, accounts.NEEDS_REAUTH, "invalid_grant")
    page = text(client.get("/mailboxes"))
    assert "Needs re-authorisation" in page and "Reconnect" in page
    start = _start(client, login_hint=ANN)
    assert parse_qs(urlsplit(start.headers["Location"]).query)["login_hint"] == [ANN]
    team.google.consent_as = ANN
    done = client.get(_consent(start.headers["Location"]))
    assert done.status_code == 303
    job = web.extensions["maillink"].jobs.wait(account_id)
    assert job is not None and not job.first and job.error is None
    assert "Up to date" in text(client.get("/mailboxes"))


def test_connect_microsoft_says_it_is_not_configured(web: Flask, app: App) -> None:
    client = sign_in(web, app, ANN)
    page = text(client.get("/mailboxes"))
    assert "Connect Microsoft" in page and "Microsoft 365 is not configured" in page
    answer = client.post(
        "/connect/microsoft", data={"csrf_token": csrf(client)}, follow_redirects=True
    )
    assert answer.status_code == 200
    assert "Microsoft 365 is not configured" in text(answer)


def test_key_rotation_keeps_web_connected_mailboxes_working(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    connect_via_web(client, web, team.google, ANN)
    refresh = _stored_refresh_token(app, ANN)
    new_key = TokenCipher.generate_key()
    write_credentials(team.folder, team.google, team.pipedrive, [new_key, team.key])
    rotating = App(load_settings(str(team.config)))
    assert rotating.rotate_keys() == 1
    rotating.close()
    write_credentials(team.folder, team.google, team.pipedrive, new_key)  # the old key is gone
    after = App(load_settings(str(team.config)))
    account = after.account(ANN)
    assert after.tokens(account)["refresh_token"] == refresh
    result = after.syncer().run(account, after.provider_for(account))
    assert result.error is None
    web2 = create_app(after, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL))
    # `keys rotate` re-encrypted the web session key too: sessions survive dropping the old key
    client.application = web2
    assert client.get("/mailboxes").status_code == 200
    assert "Up to date" in text(client.get("/mailboxes"))
    after.close()
