"""connect_microsoft and MicrosoftTokenSource against the Microsoft sandbox, through MSAL itself.

A browser stand-in follows the printed URL over HTTPS (the sandbox's throwaway CA), the sandbox
redirects to the loopback server, and MSAL redeems the code with its PKCE verifier.
"""

from __future__ import annotations

import html
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from maillink.onboarding.microsoft import (
    ConnectedMicrosoftAccount,
    MicrosoftConnectError,
    MicrosoftTokenSource,
    connect_microsoft,
    uses_instance_discovery,
)
from maillink.providers.base import NeedsReauth
from maillink.providers.graph import GraphProvider
from maillink.sandbox.microsoft import MicrosoftSandbox

REP = "Rep@Contoso.example"


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
    """Reads what the connection prints and acts on it, in a thread."""

    def __init__(self, terminal: Terminal, act: Callable[[Terminal], Any]) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                act(terminal)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=10)
        if self.error is not None:
            raise self.error


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox() as sandbox:
        sandbox.add_mailbox(REP, "Rep One")
        sandbox.consent_as = REP
        yield sandbox


FORM = re.compile(r'<form method="POST" name="hiddenform" action="([^"]+)">')
FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)" />')


def follow(
    ms: MicrosoftSandbox, change: Callable[[str], str] = lambda url: url
) -> Callable[[Terminal], Any]:
    """A browser that opens the printed URL (as changed) and submits the answer's form home."""

    def act(terminal: Terminal) -> None:
        url = change(terminal.queue.get(timeout=10))
        page = requests.get(url, verify=ms.ca_bundle, allow_redirects=False, timeout=10)
        assert page.status_code == 200, page.text
        action = html.unescape(FORM.findall(page.text)[0])
        fields = {html.unescape(k): html.unescape(v) for k, v in FIELD.findall(page.text)}
        requests.post(action, data=fields, timeout=10).raise_for_status()

    return act


def connect(ms: MicrosoftSandbox, terminal: Terminal, **kwargs: Any) -> ConnectedMicrosoftAccount:
    options: dict[str, Any] = {
        "authority": ms.authority,
        "graph_url": ms.graph_url,
        "open_browser": False,
        "out": terminal,
        "ca_bundle": ms.ca_bundle,
        "timeout": 10,
    }
    options.update(kwargs)
    return connect_microsoft(ms.client_id, **options)


def token_source(
    ms: MicrosoftSandbox, account: ConnectedMicrosoftAccount, saved: list[str]
) -> MicrosoftTokenSource:
    return MicrosoftTokenSource(
        ms.client_id,
        authority=ms.authority,
        home_account_id=account.home_account_id,
        load=lambda: saved[-1] if saved else account.token_cache,
        save=saved.append,
        ca_bundle=ms.ca_bundle,
    )


def test_no_browser_prints_the_url_and_connects_through_msal(ms: MicrosoftSandbox) -> None:
    terminal = Terminal()
    browser = Browser(terminal, follow(ms))

    account = connect(ms, terminal)
    browser.join()

    assert account.email == "rep@contoso.example"
    assert account.home_account_id == f"{ms.user_id(REP)}.{ms.identity.tenant_id}"
    assert set(account.scopes) >= {"Mail.ReadBasic", "User.Read"}
    url = urlsplit(terminal.lines[0])
    query = parse_qs(url.query)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{ms.authority}/oauth2/v2.0/authorize"
    assert query["code_challenge_method"] == ["S256"] and query["state"]
    assert query["response_mode"] == ["form_post"]
    assert urlsplit(query["redirect_uri"][0]).hostname == "localhost"
    cache = json.loads(account.token_cache)
    assert cache["RefreshToken"] and cache["AccessToken"]
    assert "refresh" not in repr(account) and account.token_cache not in repr(account)
    # Instance discovery is off for an authority that is not Microsoft's.
    assert ms.meter.requests["identity.instance_discovery"] == 0
    assert ms.meter.requests["identity.discovery"] >= 1


def test_the_connected_cache_feeds_the_graph_provider(ms: MicrosoftSandbox) -> None:
    ms.add_message(
        REP,
        "inbox",
        internet_message_id="<hello@client.example>",
        subject="Hello",
        sender="ana@client.example",
        to=[REP],
        received=datetime(2024, 3, 1, tzinfo=UTC),
    )
    terminal = Terminal()
    browser = Browser(terminal, follow(ms))
    account = connect(ms, terminal)
    browser.join()
    saved: list[str] = []
    graph = GraphProvider(
        account.email,
        token_source(ms, account, saved),
        graph_url=ms.graph_url,
        ca_bundle=ms.ca_bundle,
    )

    class Empty:
        def known_messages(self, ids: Any) -> set[str]:
            return set()

        def thread_dates(self, keys: Any) -> dict[str, datetime]:
            return {}

    pages = list(graph.pull(None, Empty()))

    assert [m.message_id for p in pages for m in p.messages] == ["hello@client.example"]


def test_the_sandbox_ca_can_come_from_requests_ca_bundle(
    ms: MicrosoftSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/configuration.md: extra CAs come from REQUESTS_CA_BUNDLE; no ca_bundle argument anywhere."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ms.ca_bundle)
    terminal = Terminal()
    browser = Browser(terminal, follow(ms))
    account = connect(ms, terminal, ca_bundle=None)
    browser.join()
    source = MicrosoftTokenSource(
        ms.client_id,
        authority=ms.authority,
        home_account_id=account.home_account_id,
        load=lambda: account.token_cache,
        save=lambda text: None,
    )
    graph = GraphProvider(account.email, source, graph_url=ms.graph_url)

    class Empty:
        def known_messages(self, ids: Any) -> set[str]:
            return set()

        def thread_dates(self, keys: Any) -> dict[str, datetime]:
            return {}

    assert [p.listed for p in graph.pull(None, Empty())] == [0, 0]


def test_device_code_prints_the_verification_url_and_the_code(ms: MicrosoftSandbox) -> None:
    terminal = Terminal()

    def enter_code(terminal: Terminal) -> None:
        url = terminal.queue.get(timeout=10)
        code = terminal.queue.get(timeout=10)
        assert url.endswith("/devicelogin") and len(code) == 9
        deadline = time.monotonic() + 5
        while ms.meter.requests["identity.token"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the user types the code while the app is polling
        answer = requests.post(url, data={"otc": code}, verify=ms.ca_bundle, timeout=10)
        assert answer.status_code == 200

    browser = Browser(terminal, enter_code)
    account = connect(ms, terminal, device_code=True)
    browser.join()

    assert account.email == "rep@contoso.example"
    assert ms.meter.requests["identity.devicecode"] == 1
    assert ms.meter.requests["identity.token"] >= 2  # authorization_pending at least once


def test_device_code_not_entered_in_time_fails_clearly(ms: MicrosoftSandbox) -> None:
    with pytest.raises(MicrosoftConnectError, match="not entered within"):
        connect(ms, Terminal(), device_code=True, timeout=1)


def test_declined_consent_is_reported(ms: MicrosoftSandbox) -> None:
    ms.consent_as = None
    terminal = Terminal()
    browser = Browser(terminal, follow(ms))

    with pytest.raises(MicrosoftConnectError, match="access_denied"):
        connect(ms, terminal)
    browser.join()


def test_a_redirect_with_another_state_is_refused(ms: MicrosoftSandbox) -> None:
    def forge(url: str) -> str:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query["state"] = "forged"
        return urlunsplit(parts._replace(query=urlencode(query)))

    terminal = Terminal()
    browser = Browser(terminal, follow(ms, forge))

    with pytest.raises(MicrosoftConnectError, match="state"):
        connect(ms, terminal)
    browser.join()


def test_no_answer_from_the_browser_times_out(ms: MicrosoftSandbox) -> None:
    with pytest.raises(MicrosoftConnectError, match="no answer from the browser"):
        connect(ms, Terminal(), timeout=0.5)


def test_a_confidential_client_connects_with_its_secret() -> None:
    with MicrosoftSandbox(client_secret="s3cret") as ms:
        ms.add_mailbox(REP)
        ms.consent_as = REP
        terminal = Terminal()
        browser = Browser(terminal, follow(ms))
        account = connect(ms, terminal, client_secret="s3cret")
        browser.join()
        assert account.email == "rep@contoso.example"
        with pytest.raises(MicrosoftConnectError, match="public client"):
            connect(ms, Terminal(), client_secret="s3cret", device_code=True)


def test_an_http_authority_is_refused(ms: MicrosoftSandbox) -> None:
    with pytest.raises(ValueError, match="https"):
        connect(ms, Terminal(), authority=ms.authority.replace("https://", "http://"))


@pytest.mark.parametrize(
    ("authority", "discovery"),
    [
        ("https://login.microsoftonline.com/common", True),
        ("https://login.microsoftonline.us/contoso.onmicrosoft.us", True),
        ("https://login.chinacloudapi.cn/organizations", True),
        ("https://login.microsoftonline.de/common", True),
        ("https://127.0.0.1:8443/sandbox-tenant", False),
        ("https://login.example.com/tenant", False),
    ],
)
def test_instance_discovery_only_for_microsofts_login_hosts(
    authority: str, discovery: bool
) -> None:
    assert uses_instance_discovery(authority) is discovery


# --- the token source ------------------------------------------------------------------------


def connected(ms: MicrosoftSandbox) -> ConnectedMicrosoftAccount:
    terminal = Terminal()
    browser = Browser(terminal, follow(ms))
    account = connect(ms, terminal)
    browser.join()
    return account


def refresh_tokens(cache: str) -> set[str]:
    return {entry["secret"] for entry in json.loads(cache)["RefreshToken"].values()}


def test_a_rotated_refresh_token_is_saved_and_the_old_one_stops_working() -> None:
    with MicrosoftSandbox(access_token_lifetime=60, rotation_grace=0) as ms:
        ms.add_mailbox(REP)
        ms.consent_as = REP
        account = connected(ms)
        saved: list[str] = []

        token = token_source(ms, account, saved)()  # a 60 s token is refreshed at once

        assert token and len(saved) == 1
        assert refresh_tokens(saved[0]).isdisjoint(refresh_tokens(account.token_cache))
        requests.get(
            f"{ms.graph_url}/me",
            headers={"Authorization": f"Bearer {token}"},
            verify=ms.ca_bundle,
            timeout=10,
        ).raise_for_status()
        stale = token_source(ms, account, [])  # still the cache from before the rotation
        with pytest.raises(NeedsReauth, match="invalid_grant"):
            stale()
        assert token_source(ms, account, list(saved))()  # the kept one works


def test_a_revoked_grant_needs_reauth(ms: MicrosoftSandbox) -> None:
    account = connected(ms)
    saved: list[str] = []
    source = token_source(ms, account, saved)
    assert source() == json.loads(account.token_cache)["AccessToken"].popitem()[1]["secret"]
    ms.revoke(REP)

    source.invalidate()  # Graph answered 401: the next call refreshes
    with pytest.raises(NeedsReauth, match="invalid_grant"):
        source()


def test_an_unknown_account_needs_reauth(ms: MicrosoftSandbox) -> None:
    account = connected(ms)
    source = MicrosoftTokenSource(
        ms.client_id,
        authority=ms.authority,
        home_account_id="someone.else",
        load=lambda: account.token_cache,
        save=lambda text: None,
        ca_bundle=ms.ca_bundle,
    )
    with pytest.raises(NeedsReauth, match="no signed-in account"):
        source()
