"""A rep in headless Chromium: sign in, connect Gmail, watch the first sync, choose a deal.

Drives Debian's /usr/bin/chromium through /usr/bin/chromedriver (Selenium, no browser download)
against `maillink serve` running as its own process, with the Google and Pipedrive sandboxes.
Screenshots go to $MAILLINK_SCREENSHOTS, else to a temporary folder copied to ./screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.web.support import ANN, MAILLINK, Team, thread_id

from maillink.app import App
from maillink.cli import Obj
from maillink.sandbox._server import Fault
from maillink.web.commands import users as users_group

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
WAIT = 20  # seconds, for any one thing to appear


def _browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return None
    return f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver; pip install selenium)"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    problem = _browser_missing()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test cannot run in CI: {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.accept_insecure_certs = True  # the Microsoft sandbox's login host: a throwaway CA
    for argument in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Path]:
    """Where screenshots are saved; without $MAILLINK_SCREENSHOTS, copied to ./screenshots/."""
    chosen = os.environ.get("MAILLINK_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    if not chosen:
        shutil.copytree(folder, ROOT / "screenshots", dirs_exist_ok=True)


@pytest.fixture
def server(team: Team) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`maillink --debug serve` on a free port; yields its URL (logs are read at the end)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            MAILLINK,
            "--config",
            str(team.config),
            "--debug",
            "serve",
            "--port",
            "0",
        ],
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
    try:
        yield found.group(1), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)


def test_a_rep_signs_in_connects_gmail_and_chooses_the_deal_of_a_waiting_thread(
    team: Team, app: App, browser: Any, shots: Path, server: tuple[str, subprocess.Popen[str]]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    url, process = server
    wait = WebDriverWait(browser, WAIT)

    def shot(name: str) -> None:
        browser.save_screenshot(str(shots / name))

    # 1. sign in with the link `maillink users add` printed
    added = CliRunner().invoke(
        users_group, ["add", ANN, "--public-url", url], obj=Obj(str(team.config), False)
    )
    assert added.exit_code == 0, added.output
    browser.get(added.stdout.strip())
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Mailboxes"))
    assert ANN in browser.find_element(By.CLASS_NAME, "who").text
    assert "No mailbox connected yet" in browser.page_source
    shot("01-signed-in-no-mailbox.png")

    # 2. connect Gmail: the sandbox's consent page answers as ann and redirects back
    team.google.consent_as = ANN
    team.google.faults.add(Fault(path=r"^/batch/", action="delay", seconds=1.5))
    browser.find_element(By.ID, "connect-google").click()
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), ANN))
    assert "is connected; its first sync has started" in browser.page_source
    assert browser.find_element(By.ID, "state").text == "Syncing…"
    shot("02-connected-first-sync-running.png")

    # 3. the page follows the sync until it is done
    wait.until(seen.text_to_be_present_in_element((By.ID, "state"), "Up to date"))
    assert browser.find_element(By.ID, "messages").text == "3"
    assert browser.find_element(By.ID, "waiting").text == "1"
    shot("03-first-sync-done.png")

    # 4. the thread waiting for a choice, with its candidates
    browser.find_element(By.ID, "to-waiting").click()
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Waiting for your choice"))
    card = browser.find_element(By.CSS_SELECTOR, "section.thread")
    assert "Renewal quote <b>2026</b>" in card.text  # shown as text, not markup
    assert "Customer renewal 2026" in card.text and "Customer: analytics upsell" in card.text
    shot("04-waiting-for-a-choice.png")

    # 5. one click chooses the deal; rule 5 applies at once
    deal = team.deals["carol"]
    card.find_element(By.CSS_SELECTOR, f'button.choose[data-item="deal:{deal}"]').click()
    wait.until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "p.flash"), "linked to"))
    assert f"linked to deal:{deal}: 2 message(s) linked" in browser.page_source
    assert "No thread is waiting for your choice" in browser.page_source
    shot("05-deal-chosen.png")

    # 6. the thread's emails are linked to the deal, in maillink and in the CRM
    renewal = thread_id(app, "Renewal quote")
    browser.get(f"{url}/threads/{renewal}")
    wait.until(seen.text_to_be_present_in_element((By.ID, "linked-to"), f"deal:{deal}"))
    assert f"Customer renewal 2026 (deal:{deal})" in browser.find_element(By.ID, "linked-to").text
    assert browser.page_source.count("user_choice") == 2
    shot("06-thread-linked-to-the-deal.png")
    activities = [a for a in team.pipedrive.activities() if "Renewal quote" in a["subject"]]
    assert len(activities) == 2
    assert all(a["deal_id"] == deal and a["lead_id"] is None for a in activities)

    # no refresh token in the database file or in the server's (debug) logs
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    refresh = str(app.tokens(app.account(ANN))["refresh_token"])
    app.store.close()
    raw = b"".join(p.read_bytes() for p in team.folder.glob("maillink.db*"))
    assert refresh.encode() not in raw
    assert "maillink.web.connect" in err  # the logs were on
    assert refresh not in out + err
    for name in (
        "01-signed-in-no-mailbox.png",
        "02-connected-first-sync-running.png",
        "03-first-sync-done.png",
        "04-waiting-for-a-choice.png",
        "05-deal-chosen.png",
        "06-thread-linked-to-the-deal.png",
    ):
        assert (shots / name).stat().st_size > 5000, name


def test_after_sign_out_a_saved_session_cookie_does_not_sign_in(
    team: Team, app: App, browser: Any, server: tuple[str, subprocess.Popen[str]]
) -> None:
    """Issue 9: signing out ends the session on the server, not only the browser's cookie; and
    the sign-in link, once used, does not sign in again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    url, _process = server
    wait = WebDriverWait(browser, WAIT)
    added = CliRunner().invoke(
        users_group, ["add", ANN, "--public-url", url], obj=Obj(str(team.config), False)
    )
    assert added.exit_code == 0, added.output
    link = added.stdout.strip()
    browser.get(link)
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Mailboxes"))
    saved = browser.get_cookie("maillink_session")
    assert saved is not None and saved["httpOnly"]

    browser.find_element(By.XPATH, "//button[text()='Sign out']").click()
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Sign in"))

    # the saved cookie, put back as it was: the server no longer knows its session
    browser.delete_all_cookies()
    browser.add_cookie(
        {k: saved[k] for k in ("name", "value", "path", "httpOnly", "sameSite") if k in saved}
    )
    browser.get(f"{url}/mailboxes")
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Sign in"))
    assert ANN not in browser.page_source

    # nor does the link a second time
    browser.get(link)
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Sign in"))
    assert "already used" in browser.page_source
    browser.get(f"{url}/mailboxes")
    wait.until(seen.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Sign in"))
