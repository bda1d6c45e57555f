"""The backfill benchmark: maillink against the sandboxes, and a naive strategy in the same run.

    python -m bench.backfill --messages 100000

Generates a sandbox mailbox of `--messages` emails (bench/mailbox.py), then runs, each as its own
process against the same sandboxes (which run here, in threads):
1. `maillink backfill`, as a user runs it (Gmail pacing off: the sandbox enforces no quota);
2. the naive strategy (bench/naive.py): one messages.get per message, no CRM caches;
3. `maillink backfill` of another mailbox of `--quota-messages` emails, with the Google sandbox
   enforcing `--quota` units/s per mailbox and maillink pacing itself at `--pace-share` of it.
With `--crm hubspot` (or `both`, the default) the same mailbox (same seed) is also backfilled
with HubSpot as the CRM, and the CRM requests per message are printed side by side.
It prints each run's figures and the naive/maillink ratios. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.mailbox import DOMAIN, Generated, generate_mailbox
from maillink.app import GMAIL_SCOPE, App
from maillink.config import load_settings
from maillink.outbox import pending_count
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts
from maillink.store.schema import messages

PIPEDRIVE_WRITES = ("activities.create", "activities.update", "persons.create")
HUBSPOT_WRITES = (
    "objects.batch.create",
    "objects.create",
    "objects.update",
    "objects.batch.update",
    "associations.create",
    "associations.archive",
)
READS = (
    "persons.search",
    "persons.list",
    "deals.list",
    "deals.archived",
    "leads.list",
    "leads.archived",
    "projects.list",
    "activities.list",
)


@dataclass
class Figures:
    name: str
    messages: int
    seconds: float
    peak_rss_mb: float
    gmail_units: int
    gmail_http: int
    pipedrive_http: int
    pipedrive_reads: int
    pipedrive_tokens: int
    throttled: int  # 429 answers, Google's and Pipedrive's
    stored: int
    outbox_pending: int
    pipedrive_writes: int = 0

    def per(self, value: float) -> float:
        return value / max(self.messages, 1)

    @property
    def rate(self) -> float:
        return self.messages / max(self.seconds, 1e-9)

    def row(self) -> dict[str, float]:
        return {
            "messages/s": self.rate,
            "peak RSS (MB)": self.peak_rss_mb,
            "Gmail quota units / message": self.per(self.gmail_units),
            "Gmail HTTP requests / message": self.per(self.gmail_http),
            "Pipedrive requests / message": self.per(self.pipedrive_http),
            "Pipedrive reads / message": self.per(self.pipedrive_reads),
            "Pipedrive tokens / message": self.per(self.pipedrive_tokens),
            "429s received": self.throttled,
        }


def _workspace(
    folder: Path,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox | None,
    gmail_keys: str,
    microsoft: Any = None,
    hubspot: Any = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = write_workspace(
        folder, google, pipedrive, internal_domains=[DOMAIN], microsoft=microsoft, hubspot=hubspot
    )
    text = config.read_text().replace("[gmail]\n", f"[gmail]\n{gmail_keys}\n", 1)
    config.write_text(text)
    return config


def _connect(config: Path, google: GoogleSandbox, email: str) -> None:
    app = App(load_settings(config))
    try:
        token = google.issue_refresh_token(email)
        secret = app.cipher.encrypt(json.dumps({"refresh_token": token, "scopes": [GMAIL_SCOPE]}))
        with app.store.transaction() as conn:
            accounts.upsert(conn, email, "gmail", secret, GMAIL_SCOPE)
    finally:
        app.close()


def _run(command: Sequence[str], config: Path, log: Path) -> tuple[float, float]:
    """Run `command` (`python -m MODULE …`) to its end; (seconds, its peak RSS in MB)."""
    peak = log.with_suffix(".peak")
    if command[:2] == [sys.executable, "-m"]:
        command = [sys.executable, "-m", "bench._peak", str(peak), *command[2:]]
    env = dict(
        os.environ,
        MAILLINK_CONFIG=str(config),
        PYTHONPATH=os.pathsep.join([os.path.join(os.getcwd(), "src"), os.getcwd()]),
    )
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    sandboxes = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(
        f"  CPU: maillink {usage.ru_utime + usage.ru_stime:.1f}s, "
        f"sandboxes {sandboxes:.1f}s, over {seconds:.1f}s"
    )
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return seconds, float(peak.read_text()) if peak.exists() else usage.ru_maxrss / 1024


def _measure(
    name: str,
    command: Sequence[str],
    config: Path,
    google: GoogleSandbox,
    pipedrive: PipedriveSandbox,
    generated: Generated,
    mail_meter: Any = None,
) -> Figures:
    mail = mail_meter or google.meter
    mail.reset()
    pipedrive.meter.reset()
    seconds, rss = _run(command, config, config.with_name(f"{name}.log"))
    app = App(load_settings(config))
    with app.store.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(messages)).scalar_one()
        pending = pending_count(conn)
    app.close()
    return Figures(
        name=name,
        messages=generated.messages,
        seconds=seconds,
        peak_rss_mb=rss,
        gmail_units=mail.total_units,
        gmail_http=mail.requests["http"],
        pipedrive_http=pipedrive.meter.requests["http"],
        pipedrive_reads=sum(pipedrive.meter.requests[op] for op in READS),
        pipedrive_tokens=pipedrive.meter.total_units,
        throttled=mail.statuses[429] + pipedrive.meter.statuses[429],
        stored=stored,
        outbox_pending=pending,
        pipedrive_writes=sum(pipedrive.meter.requests[op] for op in PIPEDRIVE_WRITES),
    )


def _table(runs: list[Figures], out: Any = print) -> None:
    names = [r.name for r in runs]
    out(f"{'':<32}" + "".join(f"{n:>14}" for n in names) + f"{'naive/maillink':>16}")
    rows = [r.row() for r in runs]
    for key in rows[0]:
        values = [row[key] for row in rows]
        text = "".join(f"{_fmt(v):>14}" for v in values)
        ratio = ""
        if len(values) > 1 and values[0]:
            ratio = f"{values[1] / values[0]:.1f}x"
        out(f"{key:<32}{text}{ratio:>16}")


def _fmt(value: float) -> str:
    if isinstance(value, int) or value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--messages-per-contact", type=float, default=20.0)
    parser.add_argument("--known-share", type=float, default=0.8)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive strategy")
    parser.add_argument("--quota", type=float, default=250.0, help="sandbox units/s per mailbox")
    parser.add_argument("--quota-messages", type=int, default=5000, help="0: skip the quota run")
    parser.add_argument("--pace-share", type=float, default=0.95)
    parser.add_argument(
        "--graph-messages", type=int, default=10_000, help="an Outlook mailbox; 0: skip it"
    )
    parser.add_argument(
        "--crm",
        choices=("pipedrive", "hubspot", "both"),
        default="both",
        help="the CRM of the maillink runs; both: the same mailbox once with each",
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile maillink's backfill")
    parser.add_argument("--runner", metavar="SCRIPT", help=argparse.SUPPRESS)  # development
    args = parser.parse_args(argv)

    # The sandboxes serve both services from this one process: let their threads take turns
    # often, so that one busy Gmail batch does not hold every Pipedrive answer for 5 ms.
    sys.setswitchinterval(0.0005)
    runs: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="maillink-bench-") as tmp:
        root = Path(tmp)
        hubspot = _hubspot_run(args, root / "hubspot") if args.crm != "pipedrive" else None
        if args.crm == "hubspot":
            assert hubspot is not None
            print(f"\n{'HubSpot requests / message':<32}{_fmt(hubspot.per(hubspot.crm_http)):>14}")
            return
        with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
            started = time.monotonic()
            generated = generate_mailbox(
                google,
                pipedrive,
                messages=args.messages,
                seed=args.seed,
                messages_per_contact=args.messages_per_contact,
                known_share=args.known_share,
            )
            print(
                f"mailbox: {generated.describe()} (generated in {time.monotonic() - started:.0f}s)"
            )
            config = _workspace(root / "maillink", google, pipedrive, "quota_units_per_minute = 0")
            _connect(config, google, generated.rep)
            maillink = [sys.executable, "-m", "maillink", "backfill"]
            if args.profile:
                maillink[1:1] = ["-m", "cProfile", "-o", os.path.abspath(args.profile)]
            if args.runner:
                maillink = (
                    [args.runner] if args.runner.endswith(".sh") else [sys.executable, args.runner]
                )
            runs.append(_measure("maillink", maillink, config, google, pipedrive, generated))
            print(_summary(runs[-1]))
            if not args.no_naive:
                with pipedrive.records.lock:
                    pipedrive.records.activities.clear()  # the naive run writes them again
                naive_config = _workspace(root / "naive", google, pipedrive, "")
                naive_config.write_text(
                    naive_config.read_text()
                    + "\n[cache]\nperson_ttl_seconds = 0\nitems_ttl_seconds = 0\n"
                )
                _connect(naive_config, google, generated.rep)
                command = [sys.executable, "-m", "bench.naive", str(naive_config), generated.rep]
                runs.append(_measure("naive", command, naive_config, google, pipedrive, generated))
                print(_summary(runs[-1]))
        print()
        _table(runs)
        if hubspot is not None:
            _side_by_side(runs[0], hubspot)
        if args.quota_messages:
            _quota_run(args, root / "quota")
        if args.graph_messages:
            _graph_run(args, root / "graph")


@dataclass
class CrmFigures:
    """What one backfill cost the CRM: HTTP requests, and how many of them read or wrote."""

    messages: int
    crm_http: int
    crm_reads: int
    crm_writes: int
    by_operation: dict[str, int]

    def per(self, value: float) -> float:
        return value / max(self.messages, 1)


def _hubspot_run(args: argparse.Namespace, folder: Path) -> CrmFigures:
    """`maillink backfill` of the main run's mailbox (same seed and sizes) with HubSpot as the
    CRM: the same persons, deals, leads (projects as deals of a projects pipeline)."""
    from maillink.sandbox.hubspot import HubSpotSandbox

    sys.setswitchinterval(0.0005)
    with GoogleSandbox() as google, HubSpotSandbox() as hubspot:
        generated = generate_mailbox(
            google,
            hubspot,
            messages=args.messages,
            seed=args.seed,
            messages_per_contact=args.messages_per_contact,
            known_share=args.known_share,
        )
        config = _workspace(folder, google, None, "quota_units_per_minute = 0", hubspot=hubspot)
        _connect(config, google, generated.rep)
        hubspot.meter.reset()
        google.meter.reset()
        command = [sys.executable, "-m", "maillink", "backfill"]
        seconds, _ = _run(command, config, config.with_name("hubspot.log"))
        app = App(load_settings(config))
        with app.store.engine.connect() as conn:
            pending = pending_count(conn)
        app.close()
        used = {k: v for k, v in hubspot.meter.requests.items() if k != "http"}
        writes = sum(used.get(op, 0) for op in HUBSPOT_WRITES)
        figures = CrmFigures(
            messages=generated.messages,
            crm_http=hubspot.meter.requests["http"],
            crm_reads=sum(used.values()) - writes,
            crm_writes=writes,
            by_operation=used,
        )
        emails = len(hubspot.emails())
    print(
        f"hubspot: {generated.messages} messages in {seconds:.1f}s; "
        f"{figures.crm_http} HubSpot requests ({figures.crm_reads} reads, "
        f"{figures.crm_writes} writes) = {figures.per(figures.crm_http):.4f} per message; "
        f"{emails} emails written, outbox pending {pending}; "
        f"{google.meter.requests['http']} Gmail requests"
    )
    print("  by operation: " + ", ".join(f"{k} {v}" for k, v in sorted(used.items())))
    return figures


def _side_by_side(pipedrive: Figures, hubspot: CrmFigures) -> None:
    """The CRM cost of the same mailbox in both CRMs, per message."""
    writes = pipedrive.pipedrive_writes
    print(f"\n{'same mailbox, per message':<32}{'Pipedrive':>14}{'HubSpot':>14}")
    print(
        f"{'CRM requests / message':<32}{_fmt(pipedrive.per(pipedrive.pipedrive_http)):>14}"
        f"{_fmt(hubspot.per(hubspot.crm_http)):>14}"
    )
    print(
        f"{'CRM reads / message':<32}{_fmt(pipedrive.per(pipedrive.pipedrive_reads)):>14}"
        f"{_fmt(hubspot.per(hubspot.crm_reads)):>14}"
    )
    print(
        f"{'CRM writes / message':<32}{_fmt(pipedrive.per(writes)):>14}"
        f"{_fmt(hubspot.per(hubspot.crm_writes)):>14}"
    )
    print(f"Pipedrive requests / message: {pipedrive.per(pipedrive.pipedrive_http):.4f}")
    print(f"HubSpot requests / message: {hubspot.per(hubspot.crm_http):.4f}")


def _summary(run: Figures) -> str:
    return (
        f"{run.name}: {run.messages} messages in {run.seconds:.1f}s ({run.rate:.0f}/s); "
        f"stored {run.stored}, outbox pending {run.outbox_pending}"
    )


def _quota_run(args: argparse.Namespace, folder: Path) -> None:
    pace = round(args.quota * 60 * args.pace_share)
    with (
        GoogleSandbox(quota_units_per_second=args.quota) as google,
        PipedriveSandbox() as pipedrive,
    ):
        generated = generate_mailbox(
            google,
            pipedrive,
            messages=args.quota_messages,
            seed=args.seed + 1,
            messages_per_contact=args.messages_per_contact,
            known_share=args.known_share,
        )
        config = _workspace(folder, google, pipedrive, f"quota_units_per_minute = {pace}")
        _connect(config, google, generated.rep)
        command = [sys.executable, "-m", "maillink", "backfill"]
        run = _measure("quota", command, config, google, pipedrive, generated)
    used = run.gmail_units / run.seconds / args.quota
    print(
        f"\nunder a quota of {args.quota:.0f} units/s (maillink paced at "
        f"{pace} units/min): {run.messages} messages in {run.seconds:.1f}s, "
        f"{run.gmail_units / run.seconds:.0f} units/s = {used:.1%} of the quota used, "
        f"{run.throttled} 429s; {_summary(run)}"
    )


class _Outlook:
    """The Microsoft sandbox behind the Google sandbox's seeding calls (bench/mailbox.py):
    a rep's own mail is filed in sentitems, the rest in inbox, one conversation a thread."""

    def __init__(self, microsoft: Any) -> None:
        self.microsoft = microsoft
        self._conversations: dict[str, str] = {}

    def add_mailbox(self, email: str) -> None:
        self.microsoft.add_mailbox(email, email.split("@")[0].title())

    def add_message(
        self,
        email: str,
        *,
        headers: list[tuple[str, str]],
        internal_date: Any,
        thread_id: str | None,
        label_ids: tuple[str, ...],
        snippet: str,
    ) -> str:
        from maillink.sandbox.microsoft.mailbox import new_conversation_id

        conversation = (
            self._conversations[thread_id]
            if thread_id is not None
            else new_conversation_id(f"bench/{len(self._conversations)}")
        )
        folder = "sentitems" if "SENT" in label_ids else "inbox"
        added: str = self.microsoft.add_message_from_headers(
            email, folder, headers, received=internal_date, conversation_id=conversation
        )
        if thread_id is None:
            self._conversations[added] = conversation
        return added


def _graph_run(args: argparse.Namespace, folder: Path) -> None:
    """`maillink backfill` of an Outlook mailbox, through Graph delta."""
    from maillink.sandbox.browser import ConsentingBrowser
    from maillink.sandbox.microsoft import MicrosoftSandbox

    rep = f"carol@{DOMAIN}"
    with (
        GoogleSandbox() as google,
        PipedriveSandbox() as pipedrive,
        MicrosoftSandbox() as microsoft,
    ):
        generated = generate_mailbox(
            _Outlook(microsoft),
            pipedrive,
            messages=args.graph_messages,
            rep=rep,
            seed=args.seed + 2,
            messages_per_contact=args.messages_per_contact,
            known_share=args.known_share,
        )
        config = _workspace(folder, google, pipedrive, "", microsoft=microsoft)
        os.environ["REQUESTS_CA_BUNDLE"] = microsoft.ca_bundle  # the sandbox's throwaway CA
        app = App(load_settings(config))
        microsoft.consent_as = rep
        app.connect_microsoft(
            open_browser=False, announce=ConsentingBrowser(microsoft.ca_bundle).open
        )
        app.close()
        command = [sys.executable, "-m", "maillink", "backfill"]
        run = _measure("graph", command, config, google, pipedrive, generated, microsoft.meter)
    print(
        f"\nOutlook (Graph): {run.messages} messages in {run.seconds:.1f}s ({run.rate:.0f}/s), "
        f"{run.gmail_http} Graph HTTP requests = {run.per(run.gmail_http):.4f} per message, "
        f"Pipedrive {run.per(run.pipedrive_tokens):.2f} tokens and "
        f"{run.per(run.pipedrive_reads):.3f} reads per message, {run.throttled} 429s, "
        f"peak RSS {run.peak_rss_mb:.0f} MB; {_summary(run)}"
    )


if __name__ == "__main__":
    main()
