"""Signing in: per-user links kept as hashes, session cookies, CSRF on every form, no open redirect."""

from __future__ import annotations

import pytest
from flask import Flask
from tests.web.support import (
    ANN,
    BOB,
    PUBLIC_URL,
    Team,
    add_user,
    csrf,
    sign_in,
    text,
    write_credentials,
)

from maillink.app import App
from maillink.config import load_settings
from maillink.secrets import TokenCipher
from maillink.store import users
from maillink.store.schema import crm_state
from maillink.web.factory import create_app
from maillink.web.session_key import NAME as SESSION_KEY_NAME
from maillink.web.session_key import rotate_session_key
from maillink.web.settings import WebSettings


def test_the_sign_in_link_opens_a_session_in_an_httponly_samesite_cookie(
    web: Flask, app: App
) -> None:
    client = web.test_client()
    token = add_user(app, ANN)
    answer = client.get(f"/signin?token={token}")
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/mailboxes"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("maillink_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # served over plain http on a loopback address
    page = client.get("/mailboxes")
    assert page.status_code == 200 and ANN in text(page)
    with app.store.engine.connect() as conn:
        user = users.get_by_email(conn, ANN)
    assert user is not None and user.last_sign_in_at is not None


def test_session_cookies_are_secure_when_served_over_https(app: App) -> None:
    web = create_app(app, WebSettings.build("127.0.0.1", 8080, "https://maillink.acme.example"))
    token = add_user(app, ANN)
    answer = web.test_client().get(
        f"/signin?token={token}", base_url="https://maillink.acme.example"
    )
    assert answer.status_code == 303
    assert "Secure" in answer.headers["Set-Cookie"]


def test_an_unknown_token_signs_nobody_in(web: Flask, app: App) -> None:
    add_user(app, ANN)
    client = web.test_client()
    answer = client.get("/signin?token=not-a-real-token")
    assert answer.status_code == 403
    assert "not valid" in text(answer)
    assert client.get("/mailboxes").status_code == 303  # still signed out


def test_pages_need_a_signed_in_user(web: Flask) -> None:
    client = web.test_client()
    answer = client.get("/waiting")
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith("/signin?next=/waiting")
    assert client.get("/mailboxes/1/progress").status_code == 401
    assert client.get("/threads/1").status_code == 303


def test_a_new_link_for_a_user_ends_their_earlier_sessions(web: Flask, app: App) -> None:
    client = sign_in(web, app, ANN)
    assert client.get("/mailboxes").status_code == 200
    add_user(app, ANN)  # `maillink users add` again: a new token, the old hash is gone
    assert client.get("/mailboxes").status_code == 303


def test_a_removed_user_is_signed_out(web: Flask, app: App) -> None:
    client = sign_in(web, app, ANN)
    with app.store.transaction() as conn:
        assert users.remove(conn, ANN)
    assert client.get("/mailboxes").status_code == 303


def test_sign_in_goes_back_to_a_local_page_only(web: Flask, app: App) -> None:
    client = web.test_client()
    token = add_user(app, ANN)
    answer = client.get(f"/signin?token={token}&next=/waiting")
    assert answer.headers["Location"] == "/waiting"
    for foreign in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        token = add_user(app, ANN)  # a link signs in once: a new one for each try
        answer = client.get("/signin", query_string={"token": token, "next": foreign})
        assert answer.headers["Location"] == "/mailboxes", foreign


@pytest.mark.parametrize(
    "path",
    [
        "/signin",
        "/signout",
        "/connect/google",
        "/connect/microsoft",
        "/threads/1/choose",
        "/threads/1/unlink",
    ],
)
def test_every_form_without_its_csrf_token_is_refused(web: Flask, app: App, path: str) -> None:
    client = sign_in(web, app, ANN)
    answer = client.post(path, data={"item": "deal:1", "token": "x"})
    assert answer.status_code == 400
    assert "CSRF" in text(answer)
    forged = client.post(path, data={"item": "deal:1", "csrf_token": "forged"})
    assert forged.status_code == 400


def test_the_csrf_token_of_one_session_is_refused_in_another(web: Flask, app: App) -> None:
    ann = sign_in(web, app, ANN)
    bob = sign_in(web, app, BOB)
    answer = bob.post("/signout", data={"csrf_token": csrf(ann)})
    assert answer.status_code == 400


def test_signing_in_by_form_needs_its_csrf_token_and_works_with_it(web: Flask, app: App) -> None:
    token = add_user(app, ANN)
    client = web.test_client()
    answer = client.post("/signin", data={"token": token, "csrf_token": csrf(client, "/signin")})
    assert answer.status_code == 303
    assert client.get("/mailboxes").status_code == 200


def test_sign_out_ends_the_session(web: Flask, app: App) -> None:
    client = sign_in(web, app, ANN)
    assert client.post("/signout", data={"csrf_token": csrf(client)}).status_code == 303
    assert client.get("/mailboxes").status_code == 303


def test_requests_for_another_host_are_refused(web: Flask, app: App) -> None:
    token = add_user(app, ANN)
    answer = web.test_client().get(f"/signin?token={token}", base_url="http://evil.example/")
    assert answer.status_code == 400


def test_pages_forbid_framing_inline_scripts_and_caching(web: Flask, app: App) -> None:
    answer = sign_in(web, app, ANN).get("/mailboxes")
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["Cache-Control"] == "no-store"
    assert "<script>" not in text(answer)


def test_sign_in_tokens_are_stored_as_hashes_only(web: Flask, app: App, team: Team) -> None:
    token = add_user(app, ANN, admin=True)
    app.store.close()
    raw = b"".join(p.read_bytes() for p in team.folder.glob("maillink.db*"))
    assert token.encode() not in raw
    assert users.hash_token(token).encode() in raw


def test_the_session_key_is_stored_encrypted_and_survives_a_key_rotation(
    app: App, team: Team
) -> None:
    first = create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL))
    secret = str(first.secret_key)
    with app.store.engine.connect() as conn:
        stored = conn.execute(
            crm_state.select().where(crm_state.c.name == SESSION_KEY_NAME)
        ).first()
    assert stored is not None and secret not in stored.value
    client = sign_in(first, app, ANN)

    new_key = TokenCipher.generate_key()
    write_credentials(team.folder, team.google, team.pipedrive, [new_key, team.key])
    rotated = App(load_settings(str(team.config)))
    assert (
        str(create_app(rotated, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL)).secret_key)
        == secret
    )
    rotated.close()

    # the old key is dropped: the session key (re-encrypted at the start above) still reads
    write_credentials(team.folder, team.google, team.pipedrive, new_key)
    after = App(load_settings(str(team.config)))
    again = create_app(after, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL))
    assert str(again.secret_key) == secret
    client.application = again  # the same browser, the restarted server
    assert client.get("/mailboxes").status_code == 200
    after.close()


def test_a_session_key_no_configured_key_can_read_is_replaced_not_a_crash(
    app: App, team: Team
) -> None:
    before = str(create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL)).secret_key)
    write_credentials(team.folder, team.google, team.pipedrive, TokenCipher.generate_key())
    other = App(load_settings(str(team.config)))
    after = str(create_app(other, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL)).secret_key)
    assert after and after != before
    other.close()


def test_rotating_the_session_key_with_the_tokens_keeps_sessions(app: App, team: Team) -> None:
    secret = str(create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL)).secret_key)
    new_key = TokenCipher.generate_key()
    write_credentials(team.folder, team.google, team.pipedrive, [new_key, team.key])
    rotating = App(load_settings(str(team.config)))
    with rotating.store.transaction() as conn:
        assert rotate_session_key(conn, rotating.cipher)
    rotating.close()
    write_credentials(team.folder, team.google, team.pipedrive, new_key)
    after = App(load_settings(str(team.config)))
    assert (
        str(create_app(after, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL)).secret_key)
        == secret
    )
    after.close()


def test_a_sign_in_link_followed_from_another_site_asks_before_signing_in(
    web: Flask, app: App
) -> None:
    """Login CSRF: another site cannot silently sign a browser in as someone else."""
    token = add_user(app, BOB)
    client = web.test_client()
    answer = client.get(f"/signin?token={token}", headers={"Sec-Fetch-Site": "cross-site"})
    assert answer.status_code == 200
    assert f"Sign in as {BOB}?" in text(answer)
    assert token not in text(answer)
    assert client.get("/mailboxes").status_code == 303  # not signed in yet
    assert client.post("/signin/confirm").status_code == 400  # no CSRF token
    answer = client.post("/signin/confirm", data={"csrf_token": csrf(client, "/signin")})
    assert answer.status_code == 303
    assert BOB in text(client.get("/mailboxes"))
    # the confirmation was one-time
    again = client.post("/signin/confirm", data={"csrf_token": csrf(client)})
    assert again.status_code == 403
