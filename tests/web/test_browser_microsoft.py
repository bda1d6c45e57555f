"""A rep in headless Chromium connects a Microsoft 365 mailbox through the web app, watches its
first sync, and chooses the deal of one of its threads; then a tenant that blocks user consent
gets admin consent. `maillink serve` runs as its own process against the Microsoft, Google and
Pipedrive sandboxes; screenshots go where tests/web/test_browser.py puts them (microsoft-*.png).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.web import test_browser as chromium
from tests.web.microsoft_support import CALLBACK_PATH, microsoft_for
from tests.web.support import ADMIN, ANN, MAILLINK, Team, thread_id

from maillink.app import App
from maillink.cli import Obj
from maillink.sandbox._server import Fault
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.web.commands import users as users_group

WAIT = chromium.WAIT
browser = chromium.browser  # headless Chromium (the sandbox's throwaway CA accepted)
shots = chromium.shots


@pytest.fixture
def ms(team: Team, monkeypatch: pytest.MonkeyPatch) -> Iterator[MicrosoftSandbox]:
    with microsoft_for(team, monkeypatch, None) as sandbox:
        yield sandbox


@pytest.fixture
def server(ms: MicrosoftSandbox, team: Team) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`maillink --debug serve` on a free port, configured for Microsoft (`ms` first), its
    callback then registered at the sandbox; yields its URL (logs are read at the end)."""
    process = subprocess.Popen(
        [sys.executable, "-c", MAILLINK, "--config", str(team.config), "--debug", "serve"]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
    if not found:
        process.kill()
        raise AssertionError(f"maillink serve did not start: {line}{process.communicate()[1]}")
    ms.register_redirect_uri(found.group(1) + CALLBACK_PATH)
    try:
        yield found.group(1), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)


def _sign_in_link(team: Team, url: str, email: str, *admin: str) -> str:
    added = CliRunner().invoke(
        users_group, ["add", email, *admin, "--public-url", url], obj=Obj(str(team.config), False)
    )
    assert added.exit_code == 0, added.output
    return str(added.stdout.strip())


def test_a_rep_connects_microsoft_365_and_chooses_the_deal_of_a_waiting_thread(
    team: Team,
    app: App,
    ms: MicrosoftSandbox,
    browser: Any,
    shots: Path,
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    url, process = server
    wait = WebDriverWait(browser, WAIT)

    def shot(name: str) -> None:
        browser.save_screenshot(str(shots / f"microsoft-{name}"))

    browser.get(_sign_in_link(team, url, ANN))
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Mailboxes"))
    assert "Microsoft 365 is not configured" not in browser.page_source
    shot("01-signed-in.png")

    # Microsoft's sign-in answers as ann and redirects back to the registered callback
    ms.consent_as = ANN
    ms.faults.add(Fault(path=r"/messages/delta", action="delay", seconds=1.5))
    browser.find_element(By.ID, "connect-microsoft").click()
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), ANN))
    assert "is connected; its first sync has started" in browser.page_source
    assert browser.find_element(By.ID, "state").text == "Syncing…"
    shot("02-connected-first-sync-running.png")

    wait.until(seen.text_to_be_present_in_element((By.ID, "state"), "Up to date"))
    assert browser.find_element(By.ID, "messages").text == "3"
    assert browser.find_element(By.ID, "waiting").text == "1"
    shot("03-first-sync-done.png")

    browser.find_element(By.ID, "to-waiting").click()
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Waiting for your choice"))
    card = browser.find_element(By.CSS_SELECTOR, "section.thread")
    assert "Outlook renewal quote" in card.text and "Customer renewal 2026" in card.text
    shot("04-waiting-for-a-choice.png")

    deal = team.deals["carol"]
    card.find_element(By.CSS_SELECTOR, f'button.choose[data-item="deal:{deal}"]').click()
    wait.until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "p.flash"), "linked to"))
    assert f"linked to deal:{deal}: 2 message(s) linked" in browser.page_source
    shot("05-deal-chosen.png")

    renewal = thread_id(app, "Outlook renewal quote")
    browser.get(f"{url}/threads/{renewal}")
    wait.until(seen.text_to_be_present_in_element((By.ID, "linked-to"), f"deal:{deal}"))
    shot("06-thread-linked-to-the-deal.png")
    activities = [a for a in team.pipedrive.activities() if "Outlook renewal" in a["subject"]]
    assert len(activities) == 2 and all(a["deal_id"] == deal for a in activities)

    # no refresh token in the database file or in the server's (debug) logs
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    cache = app.tokens(app.account(ANN))["token_cache"]
    refresh = next(iter(json.loads(cache)["RefreshToken"].values()))["secret"]
    app.store.close()
    raw = b"".join(p.read_bytes() for p in team.folder.glob("maillink.db*"))
    assert refresh.encode() not in raw
    assert "connected ann@acme.example (microsoft) from the web" in err
    assert refresh not in out + err
    for name in (
        "01-signed-in.png",
        "02-connected-first-sync-running.png",
        "03-first-sync-done.png",
        "04-waiting-for-a-choice.png",
        "05-deal-chosen.png",
        "06-thread-linked-to-the-deal.png",
    ):
        assert (shots / f"microsoft-{name}").stat().st_size > 5000, name


def test_an_admin_grants_admin_consent_for_a_tenant_that_blocks_user_consent(
    team: Team,
    app: App,
    ms: MicrosoftSandbox,
    browser: Any,
    shots: Path,
    server: tuple[str, subprocess.Popen[str]],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    url, _process = server
    wait = WebDriverWait(browser, WAIT)
    ms.block_user_consent()
    browser.get(_sign_in_link(team, url, ADMIN, "--admin"))
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Mailboxes"))

    # the admin tries to connect ann's mailbox; ann may not consent: the page says why
    ms.consent_as = ANN
    browser.find_element(By.ID, "connect-microsoft").click()
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Admin consent needed"))
    assert "AADSTS90093" in browser.page_source
    browser.save_screenshot(str(shots / "microsoft-07-admin-consent-needed.png"))

    # the tenant administrator approves at Microsoft's admin-consent page
    ms.consent_as = ADMIN
    browser.find_element(By.ID, "grant-admin-consent").click()
    wait.until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "p.flash"), "Admin consent"))
    assert f"Admin consent granted for tenant {ms.identity.tenant_id}" in browser.page_source
    assert ms.admin_consented
    browser.save_screenshot(str(shots / "microsoft-08-admin-consent-granted.png"))

    # now ann's sign-in works
    ms.consent_as = ANN
    browser.find_element(By.ID, "connect-microsoft").click()
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), ANN))
    assert "is connected; its first sync has started" in browser.page_source
    assert app.account(ANN).provider == "microsoft"
