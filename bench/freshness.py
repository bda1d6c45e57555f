"""Freshness: how soon an email reaches the CRM, with push and with polling only.

    python -m bench.freshness                    # 100 mailboxes, half Gmail, half Outlook
    python -m bench.freshness --mailboxes 20 --emails 30 --minutes 1 --interval 20

The sandboxes run here, in threads; one `maillink daemon` process (through `bench._counted`, as
`bench.fleet` runs them) syncs every mailbox into a PostgreSQL database made on the server of
`--pg` (the tests' `MAILLINK_TEST_PG`) and dropped at the end. Two configurations, one after the
other, on the same mailboxes and store:
1. push: `[gmail] push_topic` (the Google sandbox publishes to the daemon's `/push/gmail`, signed
   as Pub/Sub signs, verified through `gmail_push.service_account`) and `[microsoft]
   notification_url` (Graph's notifications to `/push/graph`); polling goes on beside it;
2. polling only: the same daemon configuration without either, its ops endpoint off.
In each, `--emails` emails from known customers reach random mailboxes at random moments of
`--minutes`; each one's latency is from its delivery time at the provider (the sandbox's
internalDate / receivedDateTime) to the add time of its activity in the Pipedrive sandbox.
Provider requests per email are every request the Google and Microsoft sandboxes received in the
window (rounds, token refreshes, watches), divided by the emails.

Then, with push on and the Pipedrive webhooks installed by `maillink crm webhooks install`, a deal
is won in the Pipedrive sandbox right after its customer's email was linked to it (the daemon's
facts warm); that customer then emails every second: the time from the win to the decision of
the first email decided on the deal won (`item_closed_before_message`), read from the store.
Not part of the test suite (tests/test_bench_freshness.py runs it at a tiny size).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg

from bench import fleet, memory
from bench._push_fleet import (
    Mail,
    Sandboxes,
    connect,
    free_port,
    install_webhooks,
    outlook,
    running,
    wait_for_push,
    workspace,
)
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox

CLOSED = ("item_closed_before_message", "no_open_items")  # decided on the deal won
PUSH_TARGET, MAX_TARGET, POLL_SLACK, DEAL_TARGET = 10.0, 30.0, 5.0, 10.0


# --- figures ---------------------------------------------------------------------------------------


@dataclass
class Mode:
    """One configuration's window: the emails delivered, when each became an activity."""

    name: str
    arrived: dict[str, float]  # maillink-id -> delivery time at the provider (epoch seconds)
    made: dict[str, float]  # maillink-id -> the activity's add time in Pipedrive
    outlook: set[str]  # the maillink-ids delivered to Outlook mailboxes
    requests: Counter[str]
    seconds: float
    load: tuple[tuple[float, float, float], tuple[float, float, float]]

    def delays(self, keys: Sequence[str] | None = None) -> list[float]:
        chosen = self.arrived if keys is None else keys
        return [self.made[k] - self.arrived[k] for k in chosen if k in self.made]

    def requests_per_email(self) -> float:
        return sum(self.requests.values()) / max(len(self.arrived), 1)

    def report(self, target: str) -> str:
        gmail = [k for k in self.arrived if k not in self.outlook]
        per = max(len(self.arrived), 1)
        return (
            f"\n== {self.name}: {len(self.arrived)} emails in {self.seconds:.0f} s, "
            f"{len(self.delays())} became activities; load average "
            f"{fleet.fmt_load(self.load[0])} -> {fleet.fmt_load(self.load[1])}\n"
            f"arrival to activity: {fleet.spread(self.delays())}; target {target}\n"
            f"  Gmail: {fleet.spread(self.delays(gmail))}\n"
            f"  Outlook: {fleet.spread(self.delays(sorted(self.outlook)))}\n"
            f"provider requests per email: {self.requests_per_email():.2f} (Gmail "
            f"{self.requests['gmail'] / per:.2f}, Microsoft {self.requests['graph'] / per:.2f}; "
            f"{sum(self.requests.values()) / self.seconds * 60:.0f} a minute, the scheduled "
            "rounds of every mailbox included)"
        )


@dataclass
class DealWon:
    """From a deal won in Pipedrive to the first email of its customer decided on it."""

    warm: str | None  # the decision of the email before the win (single_open_item)
    webhook: float  # seconds until the webhook was answered by the daemon (nan: never)
    webhook_status: int
    seen: float  # seconds until that decision (nan: none within the timeout)
    reason: str
    probes: int  # emails sent after the win
    stale: int  # of them, decided on the deal still open

    def report(self, mailbox: str) -> str:
        return (
            f"  {mailbox}: {self.seen:.2f} s ({self.warm} before, {self.reason} after); the "
            f"webhook answered {self.webhook_status} after {self.webhook:.2f} s; {self.probes} "
            f"emails after the win, {self.stale} of them linked to the deal still open"
        )


def report_deals(deals: list[tuple[str, DealWon]]) -> str:
    seen = [d.seen for _, d in deals if math.isfinite(d.seen)]
    lines = [
        f"\n== a deal won in Pipedrive -> the next email of its customer decided on it "
        f"({len(deals)} deals, with push and webhooks): {fleet.spread(seen)}; target <= "
        f"{DEAL_TARGET:.0f} s"
    ]
    return "\n".join(lines + [deal.report(mailbox) for mailbox, deal in deals])


@dataclass
class Results:
    push: Mode
    polling: Mode
    deals: list[tuple[str, DealWon]]  # the mailbox the customer's emails went to, the figures
    load: list[tuple[float, float, float]] = field(default_factory=list)


# --- the measures ----------------------------------------------------------------------------------


def wait_for_activities(pipedrive: PipedriveSandbox, keys: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not set(keys) <= set(fleet.activity_times(pipedrive)):
        time.sleep(0.25)


def measure(name: str, boxes: Sandboxes, seeder: fleet.Seeder, args: argparse.Namespace) -> Mode:
    """`args.emails` emails at random moments of `args.minutes`, then every activity awaited."""
    load, before, started = os.getloadavg(), boxes.requests(), time.monotonic()
    window = args.minutes * 60
    moments = sorted(seeder.rng.uniform(0, window) for _ in range(args.emails))
    arrived: dict[str, float] = {}
    outlook: set[str] = set()
    for moment in moments:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        mailbox, now = seeder.rng.choice(boxes.mailboxes), datetime.now(UTC)
        key = seeder.email(mailbox, now)
        arrived[key] = now.timestamp()
        if mailbox in boxes.outlook:
            outlook.add(key)
    time.sleep(max(0.0, started + window - time.monotonic()))
    requests = boxes.requests() - before  # in the window: the same length in both modes
    wait_for_activities(boxes.pipedrive, list(arrived), 2 * (args.interval + args.jitter) + 60)
    made = fleet.activity_times(boxes.pipedrive)
    made = {k: made[k] for k in arrived if k in made}
    return Mode(name, arrived, made, outlook, requests, window, (load, os.getloadavg()))


def decision(store: psycopg.Connection[Any], key: str) -> tuple[str | None, float]:
    row = store.execute(
        "SELECT reason, extract(epoch from decided_at) FROM messages WHERE key = %s", (key,)
    ).fetchone()
    if row is None or row[0] is None:
        return None, math.nan
    return str(row[0]), float(row[1])


@dataclass
class Closer:
    seeder: fleet.Seeder
    deal: int


def closing_customers(mail: GoogleSandbox, pipedrive: PipedriveSandbox, n: int) -> list[Closer]:
    """Customers of their own, each with an open deal, and a Seeder that emails as each."""
    closers = []
    for i in range(n):
        seeder = fleet.Seeder(mail, pipedrive, 0)
        address = f"buyer{i}@closing{i}.example"
        person = pipedrive.add_person(f"Closing Buyer {i}", [address])
        when = datetime.now(UTC) - timedelta(days=90)
        deal = pipedrive.add_deal(f"Deal to win {i}", person, add_time=when)
        seeder.customers, seeder.seq = [address], 10**6 * (i + 1)  # Message-IDs of their own
        closers.append(Closer(seeder, deal))
    return closers


def deal_won(
    boxes: Sandboxes, closer: Closer, mailbox: str, store: psycopg.Connection[Any], wait: float
) -> DealWon:
    """Warm the daemon's facts of the customer (an email linked to its open deal), win the deal,
    then an email from the customer every second until one is decided on the deal won."""
    warm = closer.seeder.email(mailbox, datetime.now(UTC))
    wait_for_activities(boxes.pipedrive, [warm], wait)
    hooks = boxes.pipedrive.webhooks
    hooks.wait_delivered()
    sent_before = len(hooks.delivered)
    won = time.time()
    boxes.pipedrive.set_deal_status(closer.deal, "won", datetime.now(UTC))
    probes: list[str] = []
    seen, reason, next_probe = math.nan, "none", won
    while time.time() < won + wait and math.isnan(seen):
        if time.time() >= next_probe:
            probes.append(closer.seeder.email(mailbox, datetime.now(UTC)))
            next_probe += 1.0
        for key in probes:
            why, at = decision(store, key)
            if why in CLOSED:
                seen, reason = at - won, why
                break
        time.sleep(0.1)
    stale = sum(decision(store, key)[0] not in (None, *CLOSED) for key in probes)
    hooks.wait_delivered()  # the sandbox notes a delivery once the daemon has answered it
    webhook, status = math.nan, 0
    for delivery in list(hooks.delivered)[sent_before:]:
        if delivery.body.get("meta", {}).get("entity") == "deal":
            answered = hooks.hooks[delivery.webhook_id].last_delivery_time
            webhook = answered.timestamp() - won if answered else math.nan
            status = delivery.status
            break
    return DealWon(decision(store, warm)[0], webhook, status, seen, reason, len(probes), stale)


# --- the run ---------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.freshness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mailboxes", type=int, default=100, help="half Gmail, half Outlook")
    parser.add_argument("--emails", type=int, default=120, help="delivered in each mode")
    parser.add_argument("--minutes", type=float, default=4, help="each mode's delivery window")
    parser.add_argument("--interval", type=int, default=60, help="[sync] interval_seconds")
    parser.add_argument("--jitter", type=int, help="seconds (default: interval / 12)")
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--deals", type=int, default=6, help="deals won, Gmail and Outlook")
    parser.add_argument("--deal-wait", type=float, default=60, help="seconds, at most, a deal")
    parser.add_argument("--pg", default=memory.PG, help="a PostgreSQL server's database URL")
    args = parser.parse_args(argv)
    if args.mailboxes < 2 or args.emails < 1:
        parser.error("--mailboxes must be at least 2 (one of each provider), --emails at least 1")
    if args.jitter is None:
        args.jitter = round(args.interval / 12)
    return args


def run(args: argparse.Namespace, say: Any = print) -> Results:
    say(
        f"freshness: {args.mailboxes} mailboxes ({(args.mailboxes + 1) // 2} Gmail, "
        f"{args.mailboxes // 2} Outlook), one daemon on PostgreSQL, a round every "
        f"{args.interval} s (+ up to {args.jitter} s jitter); {args.emails} emails in "
        f"{args.minutes:g} min per mode; {os.cpu_count()} CPUs, load average "
        f"{fleet.fmt_load(os.getloadavg())}"
    )
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the sandboxes answer from threads of this process
    try:
        with ExitStack() as stack:
            url = stack.enter_context(memory.store_url("postgresql", args.pg))
            assert url is not None
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maillink-")))
            gmail = [fleet.rep(i) for i in range((args.mailboxes + 1) // 2)]
            boxes = Sandboxes(
                stack.enter_context(GoogleSandbox()),
                stack.enter_context(MicrosoftSandbox()),
                stack.enter_context(PipedriveSandbox()),
                gmail,
                [outlook(i) for i in range(args.mailboxes - len(gmail))],
            )
            os.environ["REQUESTS_CA_BUNDLE"] = boxes.ms.ca_bundle  # its throwaway CA, here
            stack.callback(os.environ.pop, "REQUESTS_CA_BUNDLE", None)  # and in the daemons
            return measure_all(args, folder, boxes, url, say)
    finally:
        sys.setswitchinterval(switch)


def measure_all(
    args: argparse.Namespace, folder: Path, boxes: Sandboxes, url: str, say: Any
) -> Results:
    started = time.monotonic()
    mail = cast(GoogleSandbox, Mail(boxes.google, boxes.ms, set(boxes.outlook)))
    seeder = fleet.Seeder(mail, boxes.pipedrive, args.customers)
    closers = closing_customers(mail, boxes.pipedrive, args.deals)
    for mailbox in boxes.gmail:
        boxes.google.add_mailbox(mailbox)
    for mailbox in boxes.outlook:
        boxes.ms.add_mailbox(mailbox)
    seeded = [seeder.email(m, datetime.now(UTC) - timedelta(days=2)) for m in boxes.mailboxes]
    port = free_port()
    push_config, poll_config = workspace(folder, boxes, url, args, port)
    connect(push_config, boxes)
    say(f"seeded and connected in {time.monotonic() - started:.0f} s")
    store = psycopg.connect(url, autocommit=True)
    try:
        with running(folder, push_config, "push", port):
            install_webhooks(push_config)
            wait_for_push(boxes, push_config, 120)
            wait_for_activities(boxes.pipedrive, seeded, 120 + len(seeded))
            say(f"push on: warm-up done {time.monotonic() - started:.0f} s after the start")
            push = measure("push", boxes, seeder, args)
            say(push.report(f"p95 <= {PUSH_TARGET:.0f} s, max <= {MAX_TARGET:.0f} s"))
            deals = []
            for i, closer in enumerate(closers):  # Gmail and Outlook mailboxes in turn
                pool = boxes.gmail if i % 2 == 0 else boxes.outlook
                mailbox = pool[i // 2 % len(pool)]
                deals.append((mailbox, deal_won(boxes, closer, mailbox, store, args.deal_wait)))
            say(report_deals(deals))
        with running(folder, poll_config, "polling", None):
            time.sleep(args.interval + args.jitter)  # every mailbox's first round in this daemon
            polling = measure("polling only", boxes, seeder, args)
            say(polling.report(f"p95 <= {args.interval + POLL_SLACK:.0f} s (interval + 5 s)"))
    finally:
        store.close()
    say(f"\nload average at the end {fleet.fmt_load(os.getloadavg())}")
    return Results(push, polling, deals, [push.load[0], polling.load[1]])


def main(argv: Sequence[str] | None = None) -> None:
    run(parse(argv))


if __name__ == "__main__":
    main()
