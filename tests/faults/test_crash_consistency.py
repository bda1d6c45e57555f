"""Crash consistency: `maillink backfill` and `sync --once`, SIGKILLed at random moments.

The sandboxes run in this process and outlive every kill; maillink runs as a subprocess, as a
user runs it. Each trial kills it after a seeded random delay (the seeds are printed), then the
next trial starts it again. Between kills, the stored cursors must never run ahead of the
stored messages; after the last, uninterrupted run, every expected activity exists exactly once,
nothing is lost, and the outbox is empty.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from tests.e2e.support import NOW, connect
from tests.faults.support import check_cursors, check_invariants, workspace

from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.seed import SeedMessage, Team, TeamMail, generate_team, load_team

TRIALS = 20
LEASE = 2  # seconds; a killed run's lease is taken over at once (its process is gone)
BASE_SEED = int(os.environ.get("MAILLINK_CRASH_SEED", "20261"))


def _run(config: Path, *args: str, kill_after: float | None) -> int | None:
    """Run maillink; SIGKILL it after `kill_after` seconds. The exit code, or None if killed.

    Run to its end (no `kill_after`), it must have synced every mailbox (none skipped)."""
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "maillink", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out, err = process.communicate(timeout=kill_after if kill_after is not None else 120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        return None
    if kill_after is None or process.returncode:
        assert "skipped" not in out and process.returncode == 0, out + err
    return process.returncode


@pytest.mark.crash
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        team = generate_team(messages=360, seed=BASE_SEED, now=NOW)
        mail = load_team(team, google, pipedrive)
        config = workspace(
            tmp_path, google, pipedrive, team.domain, page_size=40, lease_seconds=LEASE
        )
        app = App(load_settings(config))
        for rep in team.reps:
            connect(app, google, rep)
        app.close()
        # Slow the sandboxes a little so that kills land mid-page, mid-batch and mid-delivery.
        google.faults.add(Fault(path=r"/batch", action="delay", seconds=0.05, times=10**9))
        pipedrive.faults.add(
            Fault(path=r"/activities", method="POST", action="delay", seconds=0.01, times=10**9)
        )

        backfilled = False
        kills = 0
        arrivals = random.Random(BASE_SEED)
        for trial in range(TRIALS):
            seed = BASE_SEED + trial
            rng = random.Random(seed)
            if backfilled:
                _new_mail(mail, pipedrive, team, arrivals)
            command = ("sync", "--once") if backfilled else ("backfill",)
            delay = rng.uniform(0.3, 2.2)
            code = _run(config, *command, kill_after=delay)
            print(
                f"trial {trial}: seed {seed}, {' '.join(command)}, kill after {delay:.2f}s: "
                + ("killed" if code is None else f"exited {code}")
            )
            kills += code is None
            assert code in (None, 0)
            # No wait for the killed run's lease: its process is gone, so the next run takes
            # the mailbox at once (a lease outliving its process would leave work undone here).
            backfilled = backfilled or (command == ("backfill",) and code == 0)
            store = App(load_settings(config)).store
            check_cursors(store, google)
            store.close()

        google.faults.clear()
        pipedrive.faults.clear()
        if not backfilled:
            assert _run(config, "backfill", kill_after=None) == 0
        for _ in range(2):  # the last arrivals, and a round that finds nothing new
            assert _run(config, "sync", "--once", kill_after=None) == 0
        app = App(load_settings(config))
        try:
            check_invariants(app.store, google, pipedrive)
        finally:
            app.close()
        print(
            f"{kills} of {TRIALS} runs killed; {len(pipedrive.activities())} activities; "
            f"{time.monotonic() - started:.0f}s"
        )
        assert kills >= TRIALS // 3


def _new_mail(mail: TeamMail, pipedrive: PipedriveSandbox, team: Team, rng: random.Random) -> None:
    """Replies arrive in a few threads; now and then a deal is won."""
    threads = team.threads
    for _ in range(rng.randint(8, 20)):
        index = rng.randrange(len(threads))
        thread = threads[index]
        last = thread.messages[-1]
        when = NOW - timedelta(minutes=rng.randint(1, 60))
        headers = [(k, v) for k, v in last.headers if k not in ("Message-ID", "Date")]
        headers += [
            ("Message-ID", f"<reply-{rng.getrandbits(48)}@mail.example>"),
            ("Date", when.strftime("%a, %d %b %Y %H:%M:%S +0000")),
        ]
        reply = SeedMessage(last.mailboxes, headers, when, last.sent_by, "a reply")
        mail.add(index, [reply])
    if rng.random() < 0.3:
        open_deals = [i for i in team.items if i.kind == "deal" and i.status == "open"]
        deal = rng.choice(open_deals)
        if isinstance(deal.crm_id, int):
            pipedrive.set_deal_status(deal.crm_id, "won", at=NOW - timedelta(minutes=90))
            deal.status = "won"
