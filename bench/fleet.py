"""The fleet benchmark: many idle Gmail mailboxes on several daemons sharing one PostgreSQL store.

    python -m bench.fleet                     # 10,000 mailboxes, 4 daemons, a round every 120 s
    python -m bench.fleet --scale 0.1         # the same load: 1,000 mailboxes every 12 s
    python -m bench.fleet --mailboxes 240 --daemons 2 --interval 12 --minutes 2 \
        --arrivals 0.01 --arrival-minutes 1.5    # beside other work on a 2-core machine

The sandboxes run here, in threads; the daemons are `maillink daemon` processes, run through
`bench._counted`, which counts each daemon's SQL statements and transactions at the driver (no
change to maillink). A fresh database is made on the PostgreSQL server of `--pg` (the tests'
`MAILLINK_TEST_PG`) and dropped at the end. Phases:
1. warm-up: the daemons start; every mailbox's first round (each has `--seed-mail` emails);
2. idle: `--minutes` of nothing new anywhere, measured;
3. arrivals (`--arrivals`, 0 skips it): a share of the mailboxes receives an email from a known
   customer each minute, for `--arrival-minutes`; the time from arrival to the CRM activity.
With a shorter interval than 120 s, time is scaled: "a minute" of arrivals is interval/2 seconds.

Rounds and their gaps are read from the leases table (each round bumps its mailbox's generation
and stamps `acquired_at`; its release sets `next_run_at`), polled every `interval/10` (≤ 1 s).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import psycopg

from maillink.app import GMAIL_SCOPE, App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.pipedrive.data import note_lines
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts

DOMAIN = "fleet.example"
TARGET_MAILBOXES, TARGET_INTERVAL, TARGET_DAEMONS = 10_000, 120, 4
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent  # the folder holding `bench`


def rep(i: int) -> str:
    return f"rep{i:05d}@{DOMAIN}"


# --- the daemons -----------------------------------------------------------------------------


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[bytes]
    counts: Path
    err: Path
    started_rss_kb: int = 0

    def proc(self, name: str) -> str:
        return Path(f"/proc/{self.process.pid}/{name}").read_text()

    def cpu_seconds(self) -> float:
        fields = self.proc("stat").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def rss_kb(self) -> int:
        for line in self.proc("status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def read_counts(self) -> dict[str, Any]:
        for _ in range(50):
            try:
                data: dict[str, Any] = json.loads(self.counts.read_text())
                return data
            except (OSError, ValueError):
                time.sleep(0.1)
        return {"totals": {}, "statements": {}, "maillink": "?"}

    def has_started(self) -> bool:
        return self.err.exists() and '"event": "start"' in self.err.read_text()


def start_daemon(folder: Path, config: Path, name: str, *, ops_port: int | None = None) -> Daemon:
    """`maillink daemon` in a child process, its ops endpoint off (or on `ops_port`)."""
    counts, out, err = (folder / f"{name}{ext}" for ext in (".counts.json", ".out", ".err"))
    env = dict(os.environ, MAILLINK_CONFIG=str(config))
    env.pop("MAILLINK_STORE_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p
    )  # a PYTHONPATH given first: it may name another checkout of maillink
    command = [sys.executable, "-m", "bench._counted", str(counts), "maillink", "daemon"]
    command += ["--log-format", "json"]
    command += ["--no-ops"] if ops_port is None else ["--ops-port", str(ops_port)]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    return Daemon(name, process, counts, err)


# --- what the store says about rounds --------------------------------------------------------


@dataclass
class Acquired:
    account_id: int
    at: float  # acquired_at, epoch seconds
    due: float | None  # the next_run_at it was due at, when seen free just before
    gap: float | None  # since the mailbox's round before, when that one was seen too


@dataclass
class LeaseWatch:
    """Polls the leases table: every acquisition (a generation bump), its due time and gap."""

    url: str
    every: float
    acquired: list[Acquired] = field(default_factory=list)
    dues: list[tuple[int, float]] = field(default_factory=list)  # (mailbox, next_run_at) seen
    polls: int = 0
    _last: dict[int, tuple[int, float | None, float, bool]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LeaseWatch:
        self._conn = psycopg.connect(self.url, autocommit=True)
        self._thread = threading.Thread(target=self._run, name="fleet-leases", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def poll(self) -> None:
        rows = self._conn.execute(
            "SELECT account_id, generation, extract(epoch from acquired_at),"
            " extract(epoch from next_run_at), owner IS NULL FROM leases"
        ).fetchall()
        with self._lock:
            self.polls += 1
            for account_id, generation, acquired, due, free in rows:
                acquired = None if acquired is None else float(acquired)
                last = self._last.get(account_id)
                if last is not None and generation > last[0] and acquired is not None:
                    one = generation == last[0] + 1
                    self.acquired.append(
                        Acquired(
                            account_id,
                            acquired,
                            last[2] if one and last[3] else None,
                            acquired - last[1] if one and last[1] is not None else None,
                        )
                    )
                if free and (last is None or last[2] != float(due) or not last[3]):
                    self.dues.append((account_id, float(due)))
                self._last[account_id] = (generation, acquired, float(due), bool(free))

    def generations(self) -> dict[int, int]:
        with self._lock:
            return {account_id: last[0] for account_id, last in self._last.items()}


# --- figures -------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    at: float
    google: Counter[str]
    pipedrive: Counter[str]
    generations: dict[int, int]
    cpu: dict[str, float]
    rss_kb: dict[str, int]
    counts: dict[str, dict[str, Any]]
    pg_xacts: int
    polls: int
    load: tuple[float, float, float]


def snapshot(
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
    watch: LeaseWatch,
    daemons: list[Daemon],
    admin: psycopg.Connection[Any],
    database: str,
) -> Snapshot:
    watch.poll()
    xacts = admin.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
    ).fetchone()
    return Snapshot(
        at=time.time(),
        google=Counter(google.meter.requests),
        pipedrive=Counter(pipedrive.meter.requests),
        generations=watch.generations(),
        cpu={d.name: d.cpu_seconds() for d in daemons},
        rss_kb={d.name: d.rss_kb() for d in daemons},
        counts={d.name: d.read_counts() for d in daemons},
        pg_xacts=int(xacts[0]) if xacts else 0,
        polls=watch.polls,
        load=os.getloadavg(),
    )


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "no sample"
    return (
        f"p50 {pct(values, 0.5):.2f} s, p95 {pct(values, 0.95):.2f} s, "
        f"max {max(values):.2f} s ({len(values)} samples)"
    )


def report_phase(
    title: str,
    a: Snapshot,
    b: Snapshot,
    watch: LeaseWatch,
    args: argparse.Namespace,
    *,
    idle: bool,
) -> None:
    seconds = b.at - a.at
    rounds = sum(b.generations.get(k, 0) - g for k, g in a.generations.items())
    per = max(rounds, 1)
    what = "idle round" if idle else "round"
    print(f"\n== {title}: {seconds:.0f} s, load average {fmt_load(a.load)} -> {fmt_load(b.load)}")
    # Due and done, from the store's own times.
    slack = max(1.0, 10.0 * args.interval / TARGET_INTERVAL)
    by_due = {(x.account_id, x.due): x for x in watch.acquired if x.due is not None}
    dues = [(k, t) for k, t in set(watch.dues) if a.at <= t <= b.at - slack]
    late = [by_due[d].at - d[1] for d in dues if d in by_due]
    on_time = sum(lateness <= slack for lateness in late)
    expected = args.mailboxes * seconds / (args.interval + args.jitter / 2)
    print(
        f"rounds due {len(dues)}, done on time (within {slack:.0f} s of due) {on_time} "
        f"({on_time / max(len(dues), 1):.1%}), late {len(late) - on_time}, "
        f"not done {len(dues) - len(late)}; rounds done {rounds} "
        f"(a schedule kept exactly: {expected:.0f})"
    )
    print(f"lateness after due: {spread(late)}")
    gaps = [x.gap for x in watch.acquired if x.gap is not None and a.at <= x.at <= b.at]
    print(
        f"gap between a mailbox's rounds: {spread(gaps)}; "
        f"target p95 <= {args.interval + slack:.0f} s (interval + {slack:.0f} s)"
    )
    google = b.google - a.google
    named = ", ".join(
        f"{n} {google[n] / per:.3f}" for n in sorted(google) if n != "http" and google[n]
    )
    print(f"provider requests per {what}: {google['http'] / per:.3f} HTTP ({named})")
    print(
        f"Pipedrive requests per {what}: {(b.pipedrive - a.pipedrive)['http'] / per:.3f}; "
        f"token refreshes: {google['oauth.token'] / (seconds / 60):.1f} a minute"
    )
    totals: Counter[str] = Counter()
    statements: Counter[str] = Counter()
    for name in b.counts:
        totals.update(Counter(b.counts[name]["totals"]))
        totals.subtract(Counter(a.counts[name]["totals"]))
        statements.update(Counter(b.counts[name]["statements"]))
        statements.subtract(Counter(a.counts[name]["statements"]))
    print(
        f"SQL per {what} (counted in the daemons' driver): {totals['statements'] / per:.1f} "
        f"statements ({totals['pings'] / per:.1f} pings), {totals['transactions'] / per:.1f} "
        f"transactions ({totals['writing'] / per:.1f} writing, {totals['rollback'] / per:.1f} "
        f"rolled back)"
    )
    server = b.pg_xacts - a.pg_xacts - (b.polls - a.polls) - 1
    print(
        f"PostgreSQL's count (pg_stat_database, the bench's own taken out): {server / per:.1f} "
        "transactions per round"
    )
    cpu = {n: b.cpu[n] - a.cpu[n] for n in b.cpu}
    print(
        f"daemon CPU per {what}: {sum(cpu.values()) / per * 1000:.1f} ms ("
        + ", ".join(f"{n} {c / seconds:.0%} of a core" for n, c in cpu.items())
        + ")"
    )
    if idle:
        print(f"statements per idle round, most frequent first (of {len(+statements)} kinds):")
        for text, n in (+statements).most_common(args.top):
            print(f"  {n / per:7.2f}  {text}")


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def report_memory(daemons: list[Daemon], rss: dict[str, int], mailboxes: int) -> None:
    growth = sum(rss[d.name] - d.started_rss_kb for d in daemons)
    print(
        "RSS per daemon: "
        + ", ".join(
            f"{d.name} {rss[d.name] / 1024:.0f} MB (started at {d.started_rss_kb / 1024:.0f} MB)"
            for d in daemons
        )
        + f"; per mailbox: {growth / len(daemons) / mailboxes:.0f} KB a daemon "
        f"({growth / mailboxes:.0f} KB for the fleet: growth since start over the mailboxes)"
    )


# --- seeding and arrivals ------------------------------------------------------------------------


class Seeder:
    """Mailboxes, customers (persons with a deal) and emails between them."""

    def __init__(self, google: GoogleSandbox, pipedrive: PipedriveSandbox, customers: int):
        self.google = google
        self.pipedrive = pipedrive
        self.customers = []
        for c in range(customers):
            address = f"customer{c}@customer{c}.example"
            person = pipedrive.add_person(f"Customer {c}", [address])
            pipedrive.add_deal(f"Deal {c}", person, add_time=datetime.now(UTC) - timedelta(days=90))
            self.customers.append(address)
        self.seq = 0
        self.rng = random.Random(11)

    def email(self, mailbox: str, when: datetime) -> str:
        """An email from a random customer to `mailbox`; returns its Message-ID's key."""
        self.seq += 1
        key = f"fleet{self.seq}@customer.example"
        headers = [
            ("From", self.rng.choice(self.customers)),
            ("To", mailbox),
            ("Subject", f"Question {self.seq}"),
            ("Date", format_datetime(when)),
            ("Message-ID", f"<{key}>"),
        ]
        self.google.add_message(mailbox, headers=headers, internal_date=when)
        return key


def activity_times(pipedrive: PipedriveSandbox) -> dict[str, float]:
    """When each activity was created, by the maillink-id of its note."""
    with pipedrive.records.lock:
        made = [
            (a.get("note") or "", a["_add_time"]) for a in pipedrive.records.activities.values()
        ]
    return {
        line.removeprefix("maillink-id: "): added.timestamp()
        for note, added in made
        for line in note_lines(note)
        if line.startswith("maillink-id: ")
    }


def run_arrivals(
    seeder: Seeder, args: argparse.Namespace, stop: threading.Event, arrived: dict[str, float]
) -> None:
    per_second = args.arrivals * args.mailboxes * 2 / args.interval  # per (scaled) minute
    step = 1 / per_second
    next_at = time.monotonic()
    while not stop.is_set():
        next_at += seeder.rng.expovariate(1 / step)
        if stop.wait(max(0.0, next_at - time.monotonic())):
            return
        mailbox = rep(seeder.rng.randrange(args.mailboxes))
        now = datetime.now(UTC)
        key = seeder.email(mailbox, now)
        arrived[key] = now.timestamp()


# --- the run ---------------------------------------------------------------------------------------


def connect_all(config: Path, google: GoogleSandbox, mailboxes: int) -> None:
    """Every mailbox stored as `maillink connect gmail` stores it, with a real refresh token."""
    app = App(load_settings(config, env={}))
    try:
        for start in range(0, mailboxes, 500):
            with app.store.transaction() as conn:
                for i in range(start, min(start + 500, mailboxes)):
                    token = google.issue_refresh_token(rep(i))
                    secret = app.cipher.encrypt(
                        json.dumps({"refresh_token": token, "scopes": [GMAIL_SCOPE]})
                    )
                    accounts.upsert(conn, rep(i), "gmail", secret, GMAIL_SCOPE)
    finally:
        app.close()


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def refresh_timeline(samples: list[tuple[float, int]], since: float) -> str:
    per_minute: Counter[int] = Counter()
    previous = 0
    for at, count in samples:
        per_minute[int((at - since) // 60)] += count - previous
        previous = count
    return ", ".join(str(per_minute[m]) for m in range(max(per_minute, default=0) + 1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mailboxes", type=int, default=TARGET_MAILBOXES)
    parser.add_argument("--daemons", type=int, default=TARGET_DAEMONS)
    parser.add_argument("--interval", type=int, default=TARGET_INTERVAL, help="seconds")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply --mailboxes and --interval (the load, mailboxes/interval, stays)",
    )
    parser.add_argument("--jitter", type=int, help="seconds (default: 10 s scaled like interval)")
    parser.add_argument("--workers", type=int, default=0, help="per daemon (0: maillink's default)")
    parser.add_argument("--minutes", type=float, default=10, help="the idle phase measured")
    parser.add_argument(
        "--arrivals", type=float, default=0.01, help="share of mailboxes mailed a minute; 0: none"
    )
    parser.add_argument("--arrival-minutes", type=float, default=5)
    parser.add_argument("--seed-mail", type=int, default=1, help="emails per mailbox at start")
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--settle", type=float, help="seconds after warm-up (default: interval)")
    parser.add_argument("--top", type=int, default=15, help="statements listed")
    parser.add_argument(
        "--pg",
        default=os.environ.get("MAILLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL database where the bench may create and drop its own",
    )
    args = parser.parse_args(argv)
    args.mailboxes = max(1, round(args.mailboxes * args.scale))
    args.interval = max(1, round(args.interval * args.scale))
    if args.jitter is None:
        args.jitter = round(10 * args.interval / TARGET_INTERVAL)
    if args.settle is None:
        args.settle = float(args.interval)

    rate = args.mailboxes / args.interval
    target = TARGET_MAILBOXES / TARGET_INTERVAL
    print(
        f"fleet: {args.mailboxes:,} Gmail mailboxes on {args.daemons} daemons, a round every "
        f"{args.interval} s (+ up to {args.jitter} s jitter), PostgreSQL; {os.cpu_count()} CPUs\n"
        f"load: {rate:.1f} rounds/s = {rate / target:.0%} of the target's {target:.1f} "
        f"(10,000 mailboxes / 120 s); {rate / args.daemons:.1f} a daemon = "
        f"{rate / args.daemons / (target / TARGET_DAEMONS):.0%} of the target's "
        f"{target / TARGET_DAEMONS:.1f}; load average {fmt_load(os.getloadavg())}"
    )
    sys.setswitchinterval(0.0005)  # the sandboxes answer from threads of this process
    database = f"maillink_fleet_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(args.pg, autocommit=True)
    admin.execute(f'CREATE DATABASE "{database}"')
    url = f"{args.pg.rsplit('/', 1)[0]}/{database}"
    daemons: list[Daemon] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="maillink-fleet-") as tmp,
            GoogleSandbox() as google,
            PipedriveSandbox() as pipedrive,
        ):
            folder = Path(tmp)
            run(args, folder, google, pipedrive, url, database, daemons)
    finally:
        for d in daemons:
            if d.process.poll() is None:
                d.process.kill()
                d.process.wait(timeout=10)
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def run(
    args: argparse.Namespace,
    folder: Path,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
    url: str,
    database: str,
    daemons: list[Daemon],
) -> None:
    started = time.monotonic()
    seeder = Seeder(google, pipedrive, args.customers)
    for i in range(args.mailboxes):
        google.add_mailbox(rep(i))
        for _ in range(args.seed_mail):
            seeder.email(rep(i), datetime.now(UTC) - timedelta(days=2))
    config = write_workspace(folder, google, pipedrive, internal_domains=[DOMAIN], store_url=url)
    workers = f"workers = {args.workers}\n" if args.workers else ""
    config.write_text(
        config.read_text()
        + f"\n[sync]\ninterval_seconds = {args.interval}\njitter_seconds = {args.jitter}\n"
        + workers
        + "\n[daemon]\nops_enabled = false\n"
    )
    connect_all(config, google, args.mailboxes)
    print(f"seeded and connected in {time.monotonic() - started:.0f} s")

    watch = LeaseWatch(url.replace("postgresql+psycopg://", "postgresql://"), 1.0)
    watch.every = min(1.0, args.interval / 10)
    watch.start()
    admin = psycopg.connect(url, autocommit=True)
    refreshes: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(1.0):
            refreshes.append((time.time(), google.meter.requests["oauth.token"]))

    threading.Thread(target=sample, name="fleet-meter", daemon=True).start()
    began = time.time()
    daemons.extend(start_daemon(folder, config, f"d{n}") for n in range(args.daemons))
    for d in daemons:
        wait_for(lambda d=d: d.has_started() or d.process.poll() is not None, 120, "a daemon")
        if d.process.poll() is not None:
            sys.exit(f"daemon {d.name} failed:\n{d.err.read_text()[-3000:]}")
        d.started_rss_kb = d.rss_kb()
    seeded = args.mailboxes * args.seed_mail

    def warm() -> bool:
        gens = watch.generations()
        return (
            len(gens) >= args.mailboxes
            and min(gens.values()) >= 1
            and len(activity_times(pipedrive)) >= seeded
        )

    wait_for(warm, 600 + args.mailboxes / 5, "every mailbox's first round")
    print(
        f"warm-up: every mailbox's first round done {time.time() - began:.0f} s after the "
        f"daemons started; maillink from {daemons[0].read_counts()['maillink']}"
    )
    time.sleep(args.settle)

    a = snapshot(google, pipedrive, watch, daemons, admin, database)
    time.sleep(args.minutes * 60)
    b = snapshot(google, pipedrive, watch, daemons, admin, database)
    report_phase("idle", a, b, watch, args, idle=True)
    report_memory(daemons, b.rss_kb, args.mailboxes)
    print(
        f"sandbox threads (each HTTP connection open to a sandbox holds one): "
        f"{threading.active_count()}"
    )

    if args.arrivals > 0:
        arrived: dict[str, float] = {}
        stop = threading.Event()
        mailer = threading.Thread(
            target=run_arrivals, args=(seeder, args, stop, arrived), daemon=True
        )
        c0 = snapshot(google, pipedrive, watch, daemons, admin, database)
        mailer.start()
        time.sleep(args.arrival_minutes * 60)
        stop.set()
        mailer.join()
        c1 = snapshot(google, pipedrive, watch, daemons, admin, database)
        deadline = time.monotonic() + 2 * (args.interval + args.jitter) + 30
        while time.monotonic() < deadline and not set(arrived) <= set(activity_times(pipedrive)):
            time.sleep(0.5)
        made = activity_times(pipedrive)
        delays = [made[k] - t for k, t in arrived.items() if k in made]
        report_phase(
            f"arrivals ({args.arrivals:.1%} of the mailboxes a minute)",
            c0,
            c1,
            watch,
            args,
            idle=False,
        )
        print(
            f"{len(arrived)} emails arrived, {len(delays)} became activities; arrival to "
            f"activity: {spread(delays)} (interval {args.interval} s)"
        )
    sampling.set()
    print(
        f"\ntoken refreshes a minute since the daemons started: "
        f"{refresh_timeline(refreshes, began)}"
    )
    for daemon in daemons:
        daemon.process.send_signal(signal.SIGTERM)
    for daemon in daemons:
        try:
            daemon.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
    errors = sum(
        '"level": "error"' in line for d in daemons for line in d.err.read_text().splitlines()
    )
    print(f"daemons stopped; {errors} error lines in their logs; load {fmt_load(os.getloadavg())}")
    watch.stop()
    admin.close()


if __name__ == "__main__":
    main()
