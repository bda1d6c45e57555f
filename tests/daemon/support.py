"""Helpers of the daemon tests: a team of mailboxes in the sandboxes, daemons as subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from tests.e2e.support import DOMAIN, NOW

from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox


def rep(i: int) -> str:
    return f"rep{i:02d}@{DOMAIN}"


@dataclass
class Team:
    """Mailboxes with threads between their rep and known customers; every email makes one
    activity, so the expected activities are the Message-IDs sent."""

    google: GoogleSandbox
    pipedrive: PipedriveSandbox
    keys: dict[str, set[str]] = field(default_factory=dict)  # mailbox → Message-IDs it holds
    threads: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # → (gmail id, cust)
    _seq: int = 0

    def add_mailbox(self, email: str) -> None:
        self.google.add_mailbox(email)
        self.keys[email] = set()
        self.threads[email] = []

    def customer(self, name: str, *, deal: bool) -> str:
        address = f"{name}@customer.example"
        person = self.pipedrive.add_person(name.title(), [address])
        if deal:
            self.pipedrive.add_deal(f"{name} deal", person, add_time=NOW - timedelta(days=90))
        return address

    def send(
        self,
        mailbox: str,
        customer: str,
        date: datetime,
        *,
        thread: str | None = None,
        also: tuple[str, ...] = (),
        subject: str = "Quote",
    ) -> str:
        """One email between the rep and the customer (inbound or outbound, alternately),
        delivered to `mailbox` and to the colleagues in `also` (then in Cc)."""
        self._seq += 1
        key = f"<d{self._seq}@mail.example>"
        inbound = self._seq % 2 == 1
        frm, to = (customer, mailbox) if inbound else (mailbox, customer)
        headers = [
            ("From", frm),
            ("To", to),
            ("Subject", subject),
            ("Date", format_datetime(date)),
            ("Message-ID", key),
        ]
        if also:
            headers.append(("Cc", ", ".join(also)))
        first = None
        for box in (mailbox, *also):
            labels = ("SENT",) if frm == box else ("INBOX",)
            gid = self.google.add_message(
                box,
                headers=headers,
                internal_date=date,
                thread_id=thread if box == mailbox else None,
                label_ids=labels,
            )
            self.keys[box].add(key)
            first = first or gid
        assert first is not None
        return first

    @property
    def all_keys(self) -> set[str]:
        return {k for keys in self.keys.values() for k in keys}


def write_daemon_config(
    config: Path,
    *,
    interval: int = 1,
    lease: int = 3,
    workers: int = 3,
    max_backoff: int = 2,
    crm_poll: int = 60,
    ops: bool = True,
    page_size: int | None = None,
) -> None:
    sized = "" if page_size is None else f"page_size = {page_size}\n"
    config.write_text(
        config.read_text()
        + f"""
[sync]
interval_seconds = {interval}
jitter_seconds = 0
lease_seconds = {lease}
max_backoff_seconds = {max_backoff}
workers = {workers}
{sized}
[daemon]
ops_enabled = {"true" if ops else "false"}
ops_port = 0
crm_poll_seconds = {crm_poll}
"""
    )


@dataclass
class DaemonProcess:
    process: subprocess.Popen[str]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def ops_url(self, timeout: float = 20) -> str:
        """The URL of its /healthz, /metrics and webhooks: printed (text) or logged (JSON)."""

        def find() -> str | None:
            printed = re.search(r"webhooks on (http://\S+)", self.stdout())
            if printed:
                return printed.group(1)
            for line in self.stderr().splitlines():
                if line.startswith("{") and '"ops"' in line:
                    return str(json.loads(line)["url"])
            return None

        url: str = wait_for(find, timeout, f"daemon {self.pid} told no ops URL")
        return url

    def stop(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_daemon(config: Path, folder: Path, name: str, *args: str) -> DaemonProcess:
    """`python -m maillink daemon` as an admin runs it, its output in files under `folder`."""
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    env.pop("MAILLINK_STORE_URL", None)
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "maillink", "daemon", *args],
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=env,
        )
    return DaemonProcess(process, out, err)


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what}")
        time.sleep(every)
