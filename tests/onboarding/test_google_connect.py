"""connect_google against the Google sandbox: a real browser stand-in follows the printed URL."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from maillink.onboarding.google import ConnectedGoogleAccount, GoogleConnectError, connect_google
from maillink.sandbox.google import GoogleSandbox

REP = "rep@acme.example"
METADATA = "https://www.googleapis.com/auth/gmail.metadata"


class Terminal:
    """Stands in for stdout: keeps the lines written, hands each to a waiting reader."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.lines.append(line)
            self.queue.put(line)
        return len(text)

    def flush(self) -> None:
        return None


class Browser:
    """Reads the URL the connection prints and does something with it, in a thread."""

    def __init__(self, terminal: Terminal, act: Callable[[str], Any]) -> None:
        self.error: BaseException | None = None
        self.url = ""

        def run() -> None:
            try:
                self.url = terminal.queue.get(timeout=10)
                act(self.url)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=10)
        if self.error is not None:
            raise self.error


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        sandbox.add_mailbox(REP)
        sandbox.consent_as = REP
        yield sandbox


def connect(google: GoogleSandbox, terminal: Terminal, **kwargs: Any) -> ConnectedGoogleAccount:
    options: dict[str, Any] = {"api_endpoint": google.api_endpoint, "open_browser": False}
    options.update(kwargs)
    return connect_google(google.client_config(), out=terminal, **options)


def test_connect_returns_the_mailbox_address_and_a_working_refresh_token(
    google: GoogleSandbox,
) -> None:
    terminal = Terminal()
    browser = Browser(terminal, lambda url: requests.get(url, timeout=10).raise_for_status())
    env_before = {
        k: os.environ.get(k) for k in ("OAUTHLIB_INSECURE_TRANSPORT", "OAUTHLIB_RELAX_TOKEN_SCOPE")
    }

    account = connect(google, terminal, timeout=10)
    browser.join()

    assert account.email == REP
    assert account.scopes == (METADATA,)
    assert account.refresh_token not in repr(account)
    # the URL alone on its own line, asking for offline access with PKCE S256 and a state
    assert terminal.lines == [browser.url]
    query = parse_qs(urlsplit(browser.url).query)
    assert browser.url.startswith(google.auth_uri + "?")
    assert query["code_challenge_method"] == ["S256"]
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert len(query["state"][0]) >= 16
    assert urlsplit(query["redirect_uri"][0]).hostname == "127.0.0.1"
    # oauthlib's settings were changed for the call only
    assert {k: os.environ.get(k) for k in env_before} == env_before
    # the refresh token works
    answer = requests.post(
        google.token_uri,
        data={
            "grant_type": "refresh_token",
            "refresh_token": account.refresh_token,
            "client_id": google.client_id,
            "client_secret": google.client_secret,
        },
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["access_token"]


def test_a_redirect_with_a_forged_state_is_refused(google: GoogleSandbox) -> None:
    terminal = Terminal()

    def forge(url: str) -> None:
        consent = requests.get(url, allow_redirects=False, timeout=10)
        parts = urlsplit(consent.headers["Location"])
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query["state"] = "forged-by-an-attacker"
        requests.get(urlunsplit(parts._replace(query=urlencode(query))), timeout=10)

    browser = Browser(terminal, forge)
    with pytest.raises(GoogleConnectError, match="state"):
        connect(google, terminal, timeout=10)
    browser.join()
    assert google.meter.requests["oauth.token"] == 0  # the code was never exchanged


def test_a_denied_consent_is_a_clear_error(google: GoogleSandbox) -> None:
    google.consent_as = None
    terminal = Terminal()
    browser = Browser(terminal, lambda url: requests.get(url, timeout=10))

    with pytest.raises(GoogleConnectError, match="access_denied"):
        connect(google, terminal, timeout=10)
    browser.join()


def test_no_redirect_within_the_timeout_is_a_clear_error(google: GoogleSandbox) -> None:
    with pytest.raises(GoogleConnectError, match="no answer"):
        connect(google, Terminal(), timeout=0.3)


@pytest.mark.parametrize("key", ["token_uri", "auth_uri"])
def test_a_plain_http_endpoint_on_another_host_is_refused(google: GoogleSandbox, key: str) -> None:
    config = google.client_config()
    config["installed"][key] = "http://accounts.example.com/o/oauth2/" + key
    terminal = Terminal()
    insecure_before = os.environ.get("OAUTHLIB_INSECURE_TRANSPORT")

    with pytest.raises(ValueError, match="loopback"):
        connect_google(config, api_endpoint=google.api_endpoint, open_browser=False, out=terminal)
    assert terminal.lines == []
    assert os.environ.get("OAUTHLIB_INSECURE_TRANSPORT") == insecure_before


def test_a_client_file_without_its_section_is_refused() -> None:
    with pytest.raises(ValueError, match="installed"):
        connect_google({"other": {}}, api_endpoint="https://gmail.googleapis.com")
