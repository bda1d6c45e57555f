"""`maillink users add|list|remove` and `maillink serve`, as commands and as a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import requests
from click.testing import CliRunner
from tests.web.support import ANN, BOB, MAILLINK, Team, write_credentials

from maillink.app import App
from maillink.cli import Obj
from maillink.store import users
from maillink.web.commands import users as users_group


def _run(team: Team, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", MAILLINK, "--config", str(team.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_users_add_prints_the_sign_in_link_once_and_stores_its_hash(team: Team, app: App) -> None:
    runner = CliRunner()
    obj = Obj(str(team.config), False)
    done = runner.invoke(
        users_group,
        ["add", "Ann@Acme.example", "--public-url", "https://maillink.acme.example"],
        obj=obj,
    )
    assert done.exit_code == 0, done.output
    (link,) = re.findall(r"https://maillink\.acme\.example/signin\?token=(\S+)", done.stdout)
    assert "shown only this once" in done.stderr
    with app.store.engine.connect() as conn:
        user = users.by_token(conn, link)
    assert user is not None and user.email == ANN and not user.is_admin
    assert user.token_hash == users.hash_token(link) != link

    listed = runner.invoke(users_group, ["list"], obj=obj)
    assert ANN in listed.output and link not in listed.output

    again = runner.invoke(users_group, ["add", ANN, "--admin"], obj=obj)
    assert "previous one no longer works" in again.stderr
    (new,) = re.findall(r"http://127\.0\.0\.1:8080/signin\?token=(\S+)", again.stdout)
    with app.store.engine.connect() as conn:
        assert users.by_token(conn, link) is None
        renewed = users.by_token(conn, new)
    assert renewed is not None and renewed.is_admin

    removed = runner.invoke(users_group, ["remove", ANN], obj=obj)
    assert removed.exit_code == 0
    with app.store.engine.connect() as conn:
        assert users.by_token(conn, new) is None


def test_users_add_refuses_what_is_not_an_address(team: Team) -> None:
    done = CliRunner().invoke(
        users_group, ["add", "not an address"], obj=Obj(str(team.config), False)
    )
    assert done.exit_code == 2
    assert "is not an email address" in done.output


def test_serve_refuses_a_public_http_url_for_a_remote_host(team: Team) -> None:
    done = _run(team, "serve", "--public-url", "http://maillink.acme.example")
    assert done.returncode == 2
    assert "use https://" in done.stderr


def test_serve_without_an_encryption_key_is_a_clear_error(team: Team) -> None:
    write_credentials(team.folder, team.google, team.pipedrive, [])
    env = {k: v for k, v in os.environ.items() if k != "MAILLINK_ENCRYPTION_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", MAILLINK, "--config", str(team.config), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "no encryption key" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_runs_as_a_process_and_stops_cleanly_on_sigterm(team: Team) -> None:
    done = _run(team, "users", "add", BOB)
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip()
    process = subprocess.Popen(
        [sys.executable, "-c", MAILLINK, "--config", str(team.config), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
        assert found, line
        url = found.group(1)
        session = requests.Session()
        answer = session.get(link.replace("http://127.0.0.1:8080", url), timeout=10)
        assert answer.status_code == 200 and BOB in answer.text
        assert "Connect Google" in answer.text
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped" in out
    assert link.split("token=")[1] not in out + err  # the sign-in token is never logged
