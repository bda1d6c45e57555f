"""`maillink demo`: the whole pipeline against the local sandbox, with nothing else needed.

Starts the Google and Pipedrive sandboxes, seeds a generated team, onboards each rep's mailbox
through the real OAuth onboarding code, backfills, then runs an incremental round with new mail
and a deal won meanwhile, and a second round that must write nothing new. Prints what happened.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select

from maillink.app import App
from maillink.config import load_settings
from maillink.daemon import sync_round
from maillink.outbox import pending_count
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.seed import (
    SeedMessage,
    add_thread_messages,
    generate_team,
    load_team,
    odd_messages,
)
from maillink.sandbox.workspace import write_workspace
from maillink.store.schema import messages


class _Browser:
    """Stands in for the rep's browser: follows the authorization URL the onboarding prints."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("http"):
                self.thread = threading.Thread(
                    target=self._follow, args=(line.strip(),), daemon=True
                )
                self.thread.start()
        return len(text)

    def flush(self) -> None:
        return None

    def _follow(self, url: str) -> None:
        try:
            requests.get(url, timeout=30)  # consent → 302 → the loopback redirect server
        except BaseException as exc:  # surfaced by the onboarding's own timeout
            self.error = exc


def _reasons(app: App) -> Counter[str]:
    with app.store.engine.connect() as conn:
        rows = conn.execute(select(messages.c.reason, func.count()).group_by(messages.c.reason))
        return Counter({reason or "undecided": count for reason, count in rows})


def _table(counts: Counter[str], out: Callable[[str], None]) -> None:
    total = sum(counts.values())
    out(f"  {'reason':<28}{'messages':>9}")
    for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        out(f"  {reason:<28}{count:>9}")
    out(f"  {'total':<28}{total:>9}")


def run_demo(
    *, messages: int = 2400, seed: int = 7, out: Callable[[str], None] = print
) -> dict[str, Any]:
    started = time.monotonic()
    now = datetime.now(UTC).replace(microsecond=0)
    team = generate_team(messages=messages, seed=seed, now=now)
    report: dict[str, Any] = {}
    with (
        GoogleSandbox() as google,
        PipedriveSandbox() as pipedrive,
        tempfile.TemporaryDirectory(prefix="maillink-demo-") as tmp,
    ):
        odd = odd_messages(team, team.reps[0], now)
        seeded = load_team(team, google, pipedrive, extra_threads=odd)
        out(
            f"sandbox: Google at {google.url}, Pipedrive at {pipedrive.url}; team of {len(team.reps)} reps, "
            f"{team.message_count + sum(len(t.messages) for t in odd)} emails in {len(team.threads) + len(odd)} threads, "
            f"{sum(p.known for p in team.persons)} CRM persons, {len(team.items)} items"
        )
        app = App(
            load_settings(
                write_workspace(Path(tmp), google, pipedrive, internal_domains=[team.domain])
            )
        )
        try:
            # 1. onboarding, through the real OAuth code (PKCE, state, loopback redirect)
            for rep in team.reps:
                google.consent_as = rep
                browser = _Browser()
                account = app.connect_gmail(open_browser=False, out=browser)
                out(f"connected {account.email} through OAuth (PKCE + state, loopback redirect)")

            # 2. backfill
            google.meter.reset()
            pipedrive.meter.reset()
            syncer = app.syncer()
            backfilled = 0
            for account in app.store_accounts():
                result = syncer.backfill(account, app.provider_for(account))
                backfilled += result.messages
                if result.error:
                    out(f"  {account.email}: {result.error}")
            figures = {
                "messages": backfilled,
                "gmail_units": google.meter.total_units,
                "gmail_http": google.meter.requests["http"],
                "pipedrive_http": pipedrive.meter.requests["http"],
                "pipedrive_tokens": pipedrive.meter.total_units,
            }
            report["backfill"] = figures
            per = max(backfilled, 1)
            out(
                f"backfill: {backfilled} messages in {time.monotonic() - started:.1f}s; "
                f"Gmail {figures['gmail_units'] / per:.2f} quota units and {figures['gmail_http'] / per:.3f} HTTP requests per message; "
                f"Pipedrive {figures['pipedrive_http']} requests, {figures['pipedrive_tokens'] / per:.2f} API tokens per message"
            )

            # 3. meanwhile: a deal is won, new mail arrives
            won_thread = next(
                t for t in team.threads if t.kind == "single" and t.items[0].status == "open"
            )
            deal = won_thread.items[0]
            assert isinstance(deal.crm_id, int)
            pipedrive.set_deal_status(deal.crm_id, "won", at=now - timedelta(seconds=30))
            fresh = _incoming(team, now)
            index = team.threads.index(won_thread)
            last = won_thread.messages[-1]
            after_win = SeedMessage(
                last.mailboxes, _reply(last.headers, now), now, None, "after the deal was won"
            )
            add_thread_messages(google, won_thread, [after_win], index, seeded["thread_ids"])
            for position, new in fresh:
                add_thread_messages(
                    google, team.threads[position], new, position, seeded["thread_ids"]
                )
            out(
                f"meanwhile: deal:{deal.crm_id} won; {1 + sum(len(n) for _, n in fresh)} new emails arrived"
            )

            # 4. incremental round, then one more that must write nothing
            first = sync_round(app)
            created = sum(r.delivery.created for r in first)
            out(
                f"sync --once: {sum(r.messages for r in first)} new messages, {created} activities created, "
                f"{sum(r.delivery.updated for r in first)} updated"
            )
            second = sync_round(app)
            again = sum(r.delivery.created for r in second)
            out(
                f"sync --once again: {sum(r.messages for r in second)} new messages, {again} activities created"
            )
            report["rerun_created"] = again

            counts = _reasons(app)
            report["reasons"] = dict(counts)
            out("\noutcomes by reason code:")
            _table(counts, out)
            with app.store.engine.connect() as conn:
                from maillink.explain import pending

                waiting = pending(conn)
                report["outbox_pending"] = pending_count(conn)
            report["waiting"] = len(waiting)
            out(f"\nthreads waiting for a choice: {len(waiting)}")
            for row in waiting[:5]:
                cands = ", ".join(f"{c['item']} {c['title']!r}" for c in row["candidates"])
                out(f"  thread {row['thread']} ({row['account']}) {row['subject']!r}: {cands}")
            if len(waiting) > 5:
                out(f"  … and {len(waiting) - 5} more (maillink pending)")
            activities = pipedrive.activities()
            report["activities"] = len(activities)
            out(
                f"\nPipedrive now holds {len(activities)} activities; outbox pending: {report['outbox_pending']}; "
                f"done in {time.monotonic() - started:.1f}s"
            )
        finally:
            app.close()
    return report


def _reply(headers: list[tuple[str, str]], date: datetime) -> list[tuple[str, str]]:
    from email.utils import format_datetime

    values = dict(headers)
    mid = f"<reply-{date.timestamp():.0f}-{abs(hash(values.get('Message-ID', ''))) % 10**8}@mail.demo>"
    sender, to = values["From"], values["To"].split(",")[0]
    return [
        ("From", to if "acme.example" not in to else sender),
        ("To", sender if "acme.example" in sender else to),
        ("Subject", "Re: " + values.get("Subject", "").removeprefix("Re: ")),
        ("Date", format_datetime(date)),
        ("Message-ID", mid),
        ("In-Reply-To", values.get("Message-ID", "")),
    ]


def _incoming(team: Any, now: datetime) -> list[tuple[int, list[SeedMessage]]]:
    """New replies in a few existing threads (one per kind that links)."""
    picked: list[tuple[int, list[SeedMessage]]] = []
    seen: set[str] = set()
    for position, thread in enumerate(team.threads):
        if thread.kind in seen or thread.kind in ("won_midway",):
            continue
        seen.add(thread.kind)
        last = thread.messages[-1]
        picked.append(
            (
                position,
                [SeedMessage(last.mailboxes, _reply(last.headers, now), now, None, "a new reply")],
            )
        )
    return picked
