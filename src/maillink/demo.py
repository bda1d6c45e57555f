"""`maillink demo`: the whole pipeline against the local sandbox, with nothing else needed.

Starts the Google, Microsoft and CRM sandboxes (Pipedrive, or HubSpot with `--crm hubspot`),
seeds a generated team, onboards each rep's mailbox through the real OAuth onboarding code,
backfills, then runs an incremental round with new mail and a deal won meanwhile, and a second
round that must write nothing new. Prints what happened.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from maillink.app import App
from maillink.config import load_settings
from maillink.daemon import sync_round
from maillink.outbox import pending_count
from maillink.sandbox.browser import ConsentingBrowser
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.seed import (
    SeedMessage,
    generate_team,
    load_team,
    odd_messages,
)
from maillink.sandbox.workspace import write_workspace
from maillink.store.read_models import reason_counts

CRMS = ("pipedrive", "hubspot")


class _DemoCrm:
    """What the demo does with the CRM sandbox of its choice: the same seeding calls for both
    (`load_team`), the CRM's users, its cost, and what it holds at the end."""

    def __init__(self, kind: str):
        self.kind = kind
        self.sandbox: PipedriveSandbox | HubSpotSandbox = (
            HubSpotSandbox() if kind == "hubspot" else PipedriveSandbox()
        )
        self.name = "HubSpot" if kind == "hubspot" else "Pipedrive"

    def add_user(self, email: str) -> None:
        name = email.split("@")[0].title()
        if isinstance(self.sandbox, HubSpotSandbox):
            self.sandbox.add_owner(email, name)
        else:
            self.sandbox.add_user(name, email)

    def workspace(self, folder: Path, google: Any, microsoft: Any, domain: str) -> Path:
        if isinstance(self.sandbox, HubSpotSandbox):
            return write_workspace(
                folder,
                google,
                None,
                hubspot=self.sandbox,
                internal_domains=[domain],
                microsoft=microsoft,
            )
        return write_workspace(
            folder, google, self.sandbox, internal_domains=[domain], microsoft=microsoft
        )

    def cost(self, messages: int) -> str:
        """The CRM's hidden cost of the backfill: Pipedrive's API tokens, HubSpot's requests
        (its limits count requests; batching keeps them low)."""
        per = max(messages, 1)
        requests = self.sandbox.meter.requests["http"]
        if isinstance(self.sandbox, HubSpotSandbox):
            return f"HubSpot {requests} requests, {requests / per:.3f} requests per message"
        tokens = self.sandbox.meter.total_units
        return f"Pipedrive {requests} requests, {tokens / per:.2f} API tokens per message"

    def emails_held(self) -> str:
        if isinstance(self.sandbox, HubSpotSandbox):
            return f"HubSpot now holds {len(self.sandbox.emails())} email engagements"
        return f"Pipedrive now holds {len(self.sandbox.activities())} activities"


@contextmanager
def _trusting(ca_bundle: str) -> Iterator[None]:
    """Trust the Microsoft sandbox's throwaway CA for this run, as REQUESTS_CA_BUNDLE does for a
    deployment behind its own CA (docs/configuration.md)."""
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = ca_bundle
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous


def _reasons(app: App) -> Counter[str]:
    with app.store.engine.connect() as conn:
        return Counter(
            {reason or "undecided": count for reason, count in reason_counts(conn).items()}
        )


def _table(counts: Counter[str], out: Callable[[str], None]) -> None:
    total = sum(counts.values())
    out(f"  {'reason':<28}{'messages':>9}")
    for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        out(f"  {reason:<28}{count:>9}")
    out(f"  {'total':<28}{total:>9}")


def run_demo(
    *,
    messages: int = 2400,
    seed: int = 7,
    crm: str = "pipedrive",
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The demo against the `crm` sandbox ("pipedrive" or "hubspot"); returns its figures."""
    if crm not in CRMS:
        raise ValueError(f"crm {crm!r}: use one of {', '.join(CRMS)}")
    started = time.monotonic()
    now = datetime.now(UTC).replace(microsecond=0)
    team = generate_team(messages=messages, seed=seed, now=now, reps=("alice", "bob", "carol"))
    outlook = [rep for rep in team.reps if rep.startswith("carol@")]
    report: dict[str, Any] = {"crm": crm}
    chosen = _DemoCrm(crm)
    with (
        GoogleSandbox() as google,
        MicrosoftSandbox() as microsoft,
        chosen.sandbox as sandbox,
        tempfile.TemporaryDirectory(prefix="maillink-demo-") as tmp,
        _trusting(microsoft.ca_bundle),
    ):
        odd = odd_messages(team, team.reps[0], now)
        mail = load_team(
            team, google, sandbox, extra_threads=odd, microsoft=microsoft, outlook=outlook
        )
        for rep in team.reps[:-1]:  # the last rep has no CRM user: `accounts` says so
            chosen.add_user(rep)
        out(
            f"sandbox: Google at {google.url}, Microsoft at {microsoft.graph_url}, {chosen.name} "
            f"at {sandbox.url}; a team of {len(team.reps)} reps ({len(outlook)} on Outlook), "
            f"{team.message_count + sum(len(t.messages) for t in odd)} emails in "
            f"{len(team.threads) + len(odd)} threads, {sum(p.known for p in team.persons)} CRM "
            f"persons, {len(team.items)} items"
        )
        config = chosen.workspace(Path(tmp), google, microsoft, team.domain)
        app = App(load_settings(config))
        try:
            # 1. onboarding, through the real OAuth code (PKCE, state, loopback redirect); the
            # demo's own browser takes the authorization URL and consents as the rep
            for rep in team.reps:
                browser = ConsentingBrowser()
                provider = "microsoft" if rep in outlook else "gmail"
                out(f"connecting {rep} ({provider}): the demo grants the consent itself")
                if rep in outlook:
                    microsoft.consent_as = rep
                    account = app.connect_microsoft(open_browser=False, announce=browser.open)
                else:
                    google.consent_as = rep
                    account = app.connect_gmail(open_browser=False, announce=browser.open)
                out(f"connected {account.email} ({account.provider}) through OAuth: PKCE, state")

            # 2. backfill
            google.meter.reset()
            microsoft.meter.reset()
            sandbox.meter.reset()
            syncer = app.syncer()
            backfilled = Counter[str]()
            for account in app.store_accounts():
                result = syncer.backfill(account, app.provider_for(account))
                backfilled[account.provider] += result.messages
                if result.error:
                    out(f"  {account.email}: {result.error}")
            figures = {
                "messages": sum(backfilled.values()),
                "gmail_messages": backfilled["gmail"],
                "graph_messages": backfilled["microsoft"],
                "graph_http": microsoft.meter.requests["http"],
                "gmail_units": google.meter.total_units,
                "gmail_http": google.meter.requests["http"],
                f"{crm}_http": sandbox.meter.requests["http"],
            }
            if isinstance(sandbox, PipedriveSandbox):
                figures["pipedrive_tokens"] = sandbox.meter.total_units
            report["backfill"] = figures
            per_gmail = max(figures["gmail_messages"], 1)
            out(
                f"backfill: {figures['messages']} messages in {time.monotonic() - started:.1f}s; "
                f"Gmail ({figures['gmail_messages']}) {figures['gmail_units'] / per_gmail:.2f} "
                f"quota units and {figures['gmail_http'] / per_gmail:.3f} HTTP requests per message; "
                f"Graph ({figures['graph_messages']}) "
                f"{figures['graph_http'] / max(figures['graph_messages'], 1):.3f} requests per message; "
                f"{chosen.cost(figures['messages'])}"
            )

            # 3. meanwhile: a deal is won, new mail arrives
            won_thread = next(
                t for t in team.threads if t.kind == "single" and t.items[0].status == "open"
            )
            deal = won_thread.items[0]
            assert isinstance(deal.crm_id, int)
            sandbox.set_deal_status(deal.crm_id, "won", at=now - timedelta(seconds=30))
            fresh = _incoming(team, now)
            index = team.threads.index(won_thread)
            last = won_thread.messages[-1]
            after_win = SeedMessage(
                last.mailboxes, _reply(last.headers, now), now, None, "after the deal was won"
            )
            mail.add(index, [after_win])
            for position, new in fresh:
                mail.add(position, new)
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
            report["activities"] = (
                len(sandbox.emails())
                if isinstance(sandbox, HubSpotSandbox)
                else len(sandbox.activities())
            )
            out(
                f"\n{chosen.emails_held()}; outbox pending: {report['outbox_pending']}; "
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
