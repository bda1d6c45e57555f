"""Fixtures of the web tests: the team in the sandboxes, maillink's files, the App, the web app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from tests.web.support import PUBLIC_URL, Team, seed, write_credentials

from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.secrets import TokenCipher
from maillink.web.factory import create_app
from maillink.web.settings import WebSettings


@pytest.fixture
def team(tmp_path: Path) -> Iterator[Team]:
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        deals, leads = seed(google, pipedrive)
        key = TokenCipher.generate_key()
        config = tmp_path / "maillink.toml"
        config.write_text(
            f"""[store]
url = "sqlite:///{tmp_path / "maillink.db"}"

[crm]
kind = "pipedrive"
base_url = "{pipedrive.url}"

[gmail]
api_endpoint = "{google.api_endpoint}"

[linking]
internal_domains = ["acme.example"]
"""
        )
        write_credentials(tmp_path, google, pipedrive, key)
        yield Team(google, pipedrive, tmp_path, config, deals, leads, key)


@pytest.fixture
def app(team: Team) -> Iterator[App]:
    maillink = App(load_settings(str(team.config)))
    yield maillink
    maillink.close()


@pytest.fixture
def web(app: App) -> Iterator[Flask]:
    flask_app = create_app(app, WebSettings.build("127.0.0.1", 8080, PUBLIC_URL), testing=True)
    yield flask_app
    flask_app.extensions["maillink"].jobs.stop()
