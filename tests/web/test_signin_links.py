"""Sign-in links sign in once and expire; sessions end on the server (issue 9 §5, items 1 and 2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from tests.web.support import ANN, BOB, Team, add_user, csrf, sign_in, text

from maillink.app import App
from maillink.cli import Obj, cli
from maillink.errors import ConfigError
from maillink.store import users
from maillink.web.commands import users as users_group

COOKIE = "maillink_session"


def _users(team: Team, *args: str) -> Result:
    return CliRunner().invoke(users_group, list(args), obj=Obj(str(team.config), False))


def _token(result: Result) -> str:
    assert result.exit_code == 0, result.output
    (token,) = re.findall(r"/signin\?token=(\S+)", result.stdout)
    return str(token)


def _stored(app: App, email: str) -> users.WebUser:
    with app.store.engine.connect() as conn:
        user = users.get_by_email(conn, email)
    assert user is not None
    return user


# -- item 1: a link signs in once, for a day by default --------------------------------------------


def test_a_sign_in_link_signs_in_once(web: Flask, app: App) -> None:
    token = add_user(app, ANN)
    first = web.test_client()
    assert first.get(f"/signin?token={token}").status_code == 303
    assert first.get("/mailboxes").status_code == 200

    other = web.test_client()  # the same link from the browser history, a mail archive, a proxy
    again = other.get(f"/signin?token={token}")
    assert again.status_code == 403
    assert "already used" in text(again) and "maillink users link" in text(again)
    assert other.get("/mailboxes").status_code == 303  # signed out
    by_form = other.post("/signin", data={"token": token, "csrf_token": csrf(other, "/signin")})
    assert by_form.status_code == 403
    assert other.get("/mailboxes").status_code == 303
    assert first.get("/mailboxes").status_code == 200  # the session it opened goes on


def test_an_expired_sign_in_link_answers_a_clear_page_and_signs_nobody_in(
    web: Flask, app: App
) -> None:
    with app.store.transaction() as conn:
        _user, token = users.issue(
            conn, ANN, is_admin=False, now=datetime.now(UTC) - timedelta(hours=25)
        )
    client = web.test_client()
    answer = client.get(f"/signin?token={token}")
    assert answer.status_code == 403
    assert "expired" in text(answer) and "maillink users link" in text(answer)
    assert client.get("/mailboxes").status_code == 303


def test_a_link_followed_from_another_site_is_spent_when_confirmed_only(
    web: Flask, app: App
) -> None:
    token = add_user(app, BOB)
    client = web.test_client()
    asked = client.get(f"/signin?token={token}", headers={"Sec-Fetch-Site": "cross-site"})
    assert asked.status_code == 200 and _stored(app, BOB).link_used_at is None
    done = client.post("/signin/confirm", data={"csrf_token": csrf(client, "/signin")})
    assert done.status_code == 303
    assert _stored(app, BOB).link_used_at is not None
    assert web.test_client().get(f"/signin?token={token}").status_code == 403


def test_users_add_links_last_a_day_by_default_or_link_hours(
    web: Flask, app: App, team: Team
) -> None:
    before = datetime.now(UTC)
    added = _users(team, "add", ANN)
    after = datetime.now(UTC)
    assert "signs in once, until" in added.stderr
    _token(added)
    expires = _stored(app, ANN).link_expires_at
    assert expires is not None
    assert before + timedelta(hours=24) <= expires <= after + timedelta(hours=24)

    before = datetime.now(UTC)
    _token(_users(team, "add", BOB, "--link-hours", "2"))
    after = datetime.now(UTC)
    expires = _stored(app, BOB).link_expires_at
    assert expires is not None
    assert before + timedelta(hours=2) <= expires <= after + timedelta(hours=2)
    assert _users(team, "add", BOB, "--link-hours", "0").exit_code == 2


def test_the_link_lifetime_comes_from_web_link_hours_in_the_config(
    team: Team, app: App, tmp_path: Path
) -> None:
    team.config.write_text(team.config.read_text() + "\n[web]\nlink_hours = 3\n")
    before = datetime.now(UTC)
    _token(_users(team, "add", ANN))
    after = datetime.now(UTC)
    expires = _stored(app, ANN).link_expires_at
    assert expires is not None
    assert before + timedelta(hours=3) <= expires <= after + timedelta(hours=3)

    team.config.write_text(team.config.read_text().replace("link_hours = 3", "link_hour = 3"))
    refused = _users(team, "add", ANN)  # `maillink` turns a ConfigError into exit code 2
    assert isinstance(refused.exception, ConfigError) and "link_hour" in str(refused.exception)


def test_users_link_prints_a_fresh_link_and_the_old_one_stops_working(
    web: Flask, app: App, team: Team
) -> None:
    old = _token(_users(team, "add", ANN, "--admin"))
    signed = web.test_client()
    assert signed.get(f"/signin?token={old}").status_code == 303
    new = _token(_users(team, "link", ANN))
    assert new != old
    assert _stored(app, ANN).is_admin  # the role stays
    assert signed.get("/mailboxes").status_code == 303  # a new link ends the sessions
    assert web.test_client().get(f"/signin?token={old}").status_code == 403
    client = web.test_client()
    assert client.get(f"/signin?token={new}").status_code == 303
    assert client.get("/mailboxes").status_code == 200

    unknown = _users(team, "link", "nobody@acme.example")
    assert isinstance(unknown.exception, ConfigError) and "no web user" in str(unknown.exception)


# -- item 2: sessions end on the server -------------------------------------------------------------


def test_a_saved_session_cookie_does_not_sign_in_after_sign_out(web: Flask, app: App) -> None:
    client = sign_in(web, app, ANN)
    saved = client.get_cookie(COOKIE)
    assert saved is not None
    assert client.post("/signout", data={"csrf_token": csrf(client)}).status_code == 303
    replay = web.test_client()
    replay.set_cookie(COOKIE, saved.value)
    assert replay.get("/mailboxes").status_code == 303
    assert replay.get("/mailboxes/1/progress").status_code == 401


def test_a_saved_session_cookie_does_not_sign_in_after_users_remove(
    web: Flask, app: App, team: Team
) -> None:
    client = sign_in(web, app, ANN)
    saved = client.get_cookie(COOKIE)
    assert saved is not None
    assert _users(team, "remove", ANN).exit_code == 0
    _token(_users(team, "add", ANN))  # the same address again: a new user, not the old sessions
    replay = web.test_client()
    replay.set_cookie(COOKIE, saved.value)
    assert replay.get("/mailboxes").status_code == 303


def test_keys_rotate_ends_every_web_session(web: Flask, app: App, team: Team) -> None:
    ann = sign_in(web, app, ANN)
    bob = sign_in(web, app, BOB)
    assert ann.get("/mailboxes").status_code == 200
    rotated = CliRunner().invoke(cli, ["--config", str(team.config), "keys", "rotate"])
    assert rotated.exit_code == 0, rotated.output
    assert "ended 2 web session(s)" in rotated.output
    assert ann.get("/mailboxes").status_code == 303
    assert bob.get("/mailboxes").status_code == 303


@pytest.mark.parametrize("other", [ANN, BOB])
def test_signing_out_ends_this_session_only(web: Flask, app: App, other: str) -> None:
    """Another browser of the same user (or another user) stays signed in."""
    first = sign_in(web, app, ANN)
    with app.store.transaction() as conn:
        user = users.get_by_email(conn, other) or users.issue(conn, other, is_admin=False)[0]
        second_id = users.start_session(conn, user.id)
    second = web.test_client()
    with second.session_transaction() as session:
        session["sid"] = second_id
    assert first.post("/signout", data={"csrf_token": csrf(first)}).status_code == 303
    assert first.get("/mailboxes").status_code == 303
    assert second.get("/mailboxes").status_code == 200
