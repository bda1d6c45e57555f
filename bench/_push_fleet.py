"""The setup of bench/freshness.py: the sandboxes' mailboxes of both providers, the workspace
with push on and off, the mailboxes connected, and `maillink daemon` run for a block."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench import fleet, memory
from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.google.push import SERVICE_ACCOUNT
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace

TOPIC = "projects/freshness-bench/topics/gmail-push"
WEBHOOK = {"username": "maillink", "password": "freshness-bench-webhook-password"}


def outlook(i: int) -> str:
    return f"outlook{i:05d}@{fleet.DOMAIN}"


class Mail:
    """Delivers an email to a Gmail or an Outlook mailbox of the sandboxes: the `add_message`
    that `fleet.Seeder` calls, so its customers and emails serve both providers."""

    def __init__(self, google: GoogleSandbox, ms: MicrosoftSandbox, outlook: set[str]) -> None:
        self.google, self.ms, self.outlook = google, ms, outlook

    def add_message(
        self, email: str, *, headers: list[tuple[str, str]], internal_date: datetime
    ) -> str:
        if email in self.outlook:
            return self.ms.add_message_from_headers(email, "inbox", headers, received=internal_date)
        return self.google.add_message(email, headers=headers, internal_date=internal_date)


@dataclass
class Sandboxes:
    google: GoogleSandbox
    ms: MicrosoftSandbox
    pipedrive: PipedriveSandbox
    gmail: list[str]
    outlook: list[str]

    @property
    def mailboxes(self) -> list[str]:
        return self.gmail + self.outlook

    def requests(self) -> Counter[str]:
        return Counter(
            gmail=self.google.meter.requests["http"], graph=self.ms.meter.requests["http"]
        )

    def unwatched(self) -> list[str]:
        """The Gmail mailboxes not watched, the Outlook ones without both subscriptions (inbox
        and sentitems)."""
        return [m for m in self.gmail if self.google.push.watch_of(m) is None] + [
            m for m in self.outlook if len(self.ms.subscriptions.of_mailbox(m)) < 2
        ]


# --- the daemon -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running(folder: Path, config: Path, name: str, ops_port: int | None) -> Iterator[fleet.Daemon]:
    """One `maillink daemon` for the block, stopped as an admin stops it (SIGTERM)."""
    daemon = fleet.start_daemon(folder, config, name, ops_port=ops_port)
    try:
        fleet.wait_for(
            lambda: daemon.has_started() or daemon.process.poll() is not None, 120, "the daemon"
        )
        if daemon.process.poll() is not None:
            sys.exit(f"daemon {name} failed:\n{daemon.err.read_text()[-3000:]}")
        yield daemon
    except BaseException:
        print(f"daemon {name}'s log, its end:\n{daemon.err.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait(timeout=10)


def workspace(
    folder: Path, boxes: Sandboxes, url: str, args: argparse.Namespace, port: int
) -> tuple[Path, Path]:
    """maillink.toml with push on (the daemon's ops endpoint on `port` receives Pub/Sub's pushes,
    Graph's notifications and Pipedrive's webhooks) and maillink-poll.toml without push."""
    config = write_workspace(
        folder,
        boxes.google,
        boxes.pipedrive,
        internal_domains=[fleet.DOMAIN],
        store_url=url,
        microsoft=boxes.ms,
    )
    base = f"http://127.0.0.1:{port}"
    text = config.read_text() + (
        f"\n[sync]\ninterval_seconds = {args.interval}\njitter_seconds = {args.jitter}\n"
        f'\n[daemon]\npublic_url = "{base}"\ncrm_poll_seconds = 86400\n'
    )
    polling = folder / "maillink-poll.toml"
    polling.write_text(text)
    text = text.replace("[gmail]\n", f'[gmail]\npush_topic = "{TOPIC}"\n', 1)
    config.write_text(
        text.replace("[microsoft]\n", f'[microsoft]\nnotification_url = "{base}/push/graph"\n', 1)
    )
    credentials = folder / "credentials.json"
    data = json.loads(credentials.read_text())
    data["webhook"] = WEBHOOK
    data["gmail_push"] = {
        "service_account": SERVICE_ACCOUNT,
        "audience": f"{base}/push/gmail",
        "certs_url": boxes.google.certs_url,
    }
    credentials.write_text(json.dumps(data, indent=2))
    boxes.google.push.subscribe(TOPIC, f"{base}/push/gmail", audience=f"{base}/push/gmail")
    return config, polling


def connect(config: Path, boxes: Sandboxes) -> None:
    """Every mailbox stored as `maillink connect` stores it (refresh token; MSAL's cache)."""
    fleet.connect_all(config, boxes.google, len(boxes.gmail))
    app = App(load_settings(config, env={}))
    try:
        refresh = {
            m: boxes.ms.identity.issue_refresh_token(m, tuple(memory.MS_SCOPES))
            for m in boxes.outlook
        }
        memory.connect_microsoft(app, boxes.ms, refresh)
    finally:
        app.close()


def wait_for_push(boxes: Sandboxes, config: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while boxes.unwatched():
        if time.monotonic() > deadline:
            command = [sys.executable, "-m", "maillink", "--config", str(config), "accounts"]
            shown = subprocess.run(command, capture_output=True, text=True, check=False)
            sys.exit(
                f"timed out after {timeout:.0f} s waiting for the watches and subscriptions of "
                f"{', '.join(boxes.unwatched())}; maillink accounts:\n{shown.stdout}{shown.stderr}"
            )
        time.sleep(0.2)


def install_webhooks(config: Path) -> None:
    command = [sys.executable, "-m", "maillink", "--config", str(config), "crm", "webhooks"]
    done = subprocess.run([*command, "install"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"maillink crm webhooks install failed:\n{done.stdout}{done.stderr}")
