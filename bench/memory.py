"""What an idle mailbox costs a daemon in memory, measured in one process.

    python -m bench.memory                         # Gmail and Microsoft, 50 vs 500, PostgreSQL
    python -m bench.memory --provider gmail --small 50 --large 300 --store sqlite

For each provider: an App on a fresh store (a PostgreSQL database made on the server of `--pg`,
the tests' `MAILLINK_TEST_PG`, and dropped at the end; or SQLite), `--large` mailboxes in the
sandbox (one email each), connected as `maillink connect` stores them (Gmail: a refresh token;
Microsoft: MSAL's token cache from a refresh, as the sign-in leaves it), and one `Daemon`. Every
mailbox has a first round and an idle round through `Daemon._round`, as the daemon's workers run
them. What stays after `--small` mailboxes' rounds and after `--large` mailboxes' rounds is
measured (tracemalloc's traced total and the process's RSS: the sandboxes run in a child
process, so both are maillink's and its libraries' own); per mailbox = the difference divided
by (large − small). Beside it: what the process holds of the adapters, MSAL
applications and requests sessions after the rounds. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msal
import requests

from maillink.app import GMAIL_SCOPE, App
from maillink.config import load_settings
from maillink.daemon.loop import Daemon
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.microsoft import MicrosoftSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store import accounts, leases

DOMAIN = "memory.example"
PG = os.environ.get("MAILLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MS_SCOPES = ["Mail.ReadBasic", "User.Read"]
SENT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def rep(i: int) -> str:
    return f"rep{i:04d}@{DOMAIN}"


@dataclass
class Sample:
    traced: int  # bytes tracemalloc traces in this process
    rss: int  # bytes


def sample() -> Sample:
    gc.collect()
    return Sample(tracemalloc.get_traced_memory()[0], rss_bytes())


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


# --- the sandboxes, in a child process ---------------------------------------------------------


def serve(provider: str, emails: Sequence[str], pipe: Connection) -> None:
    """The child: the sandboxes with `emails` seeded (one email each); what the workspace needs
    and each mailbox's refresh token sent back; serving until the parent says stop."""
    with ExitStack() as stack:
        google = stack.enter_context(GoogleSandbox())
        pipedrive = stack.enter_context(PipedriveSandbox())
        ms = stack.enter_context(MicrosoftSandbox()) if provider == "microsoft" else None
        refresh: dict[str, str] = {}
        for email in emails:
            if ms is None:
                google.add_mailbox(email)
                google.add_message(
                    email,
                    headers=[("From", "ana@client.example"), ("To", email), ("Subject", "Hi")],
                    internal_date=SENT,
                    label_ids=("INBOX",),
                )
                refresh[email] = google.issue_refresh_token(email)
            else:
                ms.add_mailbox(email, email.split("@")[0])
                ms.add_message(
                    email,
                    "inbox",
                    internet_message_id=f"<{uuid.uuid4().hex}@client.example>",
                    subject="Hi",
                    sender="ana@client.example",
                    to=[email],
                    received=SENT,
                )
                refresh[email] = ms.identity.issue_refresh_token(email, tuple(MS_SCOPES))
        found = {
            "google": SimpleNamespace(
                api_endpoint=google.api_endpoint, config=google.client_config()
            ),
            "pipedrive": SimpleNamespace(url=pipedrive.url, api_token=pipedrive.api_token),
            "microsoft": None
            if ms is None
            else SimpleNamespace(
                authority=ms.authority,
                graph_url=ms.graph_url,
                client_id=ms.client_id,
                ca_bundle=ms.ca_bundle,
            ),
            "refresh": refresh,
        }
        pipe.send(found)
        pipe.recv()  # stop


@dataclass
class Remote:
    """The child's sandboxes as `write_workspace` reads them."""

    api_endpoint: str
    config: dict[str, Any]

    def client_config(self) -> dict[str, Any]:
        return self.config


@contextmanager
def sandboxes(provider: str, emails: Sequence[str]) -> Iterator[dict[str, Any]]:
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    child = context.Process(target=serve, args=(provider, emails, theirs), daemon=True)
    child.start()
    try:
        found: dict[str, Any] = mine.recv()
        google = found["google"]
        found["google"] = Remote(google.api_endpoint, google.config)
        yield found
    finally:
        mine.send("stop")
        child.join(timeout=30)


# --- the mailboxes -------------------------------------------------------------------------------


def connect_gmail(app: App, refresh: dict[str, str]) -> None:
    with app.store.transaction() as conn:
        for email, token in refresh.items():
            secret = app.cipher.encrypt(
                json.dumps({"refresh_token": token, "scopes": [GMAIL_SCOPE]})
            )
            accounts.upsert(conn, email, "gmail", secret, GMAIL_SCOPE)


def connect_microsoft(app: App, ms: Any, refresh: dict[str, str]) -> None:
    """Each mailbox's token cache as the sign-in leaves it: MSAL's own, from one refresh."""
    session = requests.Session()
    session.verify = ms.ca_bundle
    discovered: dict[Any, Any] = {}  # MSAL's http_cache: the authority is discovered once
    with app.store.transaction() as conn:
        for email, token in refresh.items():
            cache = msal.SerializableTokenCache()
            client = msal.PublicClientApplication(
                ms.client_id,
                authority=ms.authority,
                instance_discovery=False,
                http_client=session,
                http_cache=discovered,
                token_cache=cache,
            )
            result = client.acquire_token_by_refresh_token(token, MS_SCOPES)
            if "access_token" not in result:
                raise SystemExit(f"{email}: the sandbox refused the refresh: {result}")
            home = client.get_accounts()[0]["home_account_id"]
            secret = app.cipher.encrypt(
                json.dumps(
                    {"token_cache": cache.serialize(), "home_account_id": home, "scopes": MS_SCOPES}
                )
            )
            accounts.upsert(conn, email, "microsoft", secret, " ".join(MS_SCOPES))
    session.close()


# --- the measure ---------------------------------------------------------------------------------


@contextmanager
def store_url(kind: str, pg: str) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
        return
    import psycopg

    name = f"maillink_memory_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(pg, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rounds(daemon: Daemon, app: App, emails: Sequence[str]) -> list[str]:
    """A first round and an idle one of each mailbox, as a daemon worker runs them; the errors."""
    errors = []
    for email in emails:
        account = app.account(email)
        for _ in range(2):
            (lease,) = daemon.rounds.acquire(limit=1, account_ids=[account.id], due_only=False)
            daemon._round(lease)
        error = app.account(email).last_error
        if error:
            errors.append(f"{email}: {error}")
    return errors


def measure(provider: str, args: argparse.Namespace) -> None:
    emails = [rep(i) for i in range(args.large)]
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maillink-memory-")))
        found = stack.enter_context(sandboxes(provider, emails))
        ms = found["microsoft"]
        if ms is not None:
            os.environ["REQUESTS_CA_BUNDLE"] = ms.ca_bundle  # the sandbox's throwaway CA
            stack.callback(os.environ.pop, "REQUESTS_CA_BUNDLE", None)
        url = stack.enter_context(store_url(args.store, args.pg))
        config = write_workspace(
            folder,
            found["google"],
            found["pipedrive"],
            internal_domains=[DOMAIN],
            store_url=url,
            microsoft=ms,
        )
        app = App(load_settings(config, env={}))
        stack.callback(app.close)
        if ms is None:
            connect_gmail(app, found["refresh"])
        else:
            connect_microsoft(app, ms, found["refresh"])
        daemon = Daemon(app, should_stop=threading.Event().is_set, workers=1)
        with app.store.transaction() as conn:
            leases.ensure(conn, daemon.clock() - timedelta(seconds=1))
        # Warm: imports, the shared description and pools, the linking policy, first answers.
        errors = rounds(daemon, app, emails[:2])
        base = sample()
        errors += rounds(daemon, app, emails[2 : args.small])
        small = sample()
        errors += rounds(daemon, app, emails[args.small :])
        large = sample()
        n = args.large - args.small
        print(
            f"{provider:9} {args.store:10} {args.small} → {args.large} mailboxes: "
            f"{(large.traced - small.traced) / n / 1024:6.1f} KB per mailbox traced, "
            f"{(large.rss - small.rss) / n / 1024:6.1f} KB per mailbox RSS "
            f"(traced {small.traced / 2**20:.1f} → {large.traced / 2**20:.1f} MB, "
            f"RSS {small.rss / 2**20:.0f} → {large.rss / 2**20:.0f} MB; "
            f"2 → {args.small}: {(small.traced - base.traced) / (args.small - 2) / 1024:.1f} KB"
            " traced per mailbox)",
            flush=True,
        )
        print(f"{'':9} held after the rounds: {holdings()}", flush=True)
        if errors:
            print(f"{'':9} {len(errors)} rounds failed, the first: {errors[0]}", flush=True)
        if args.top:
            top(args.top)


def holdings() -> str:
    from maillink.providers.gmail import GmailProvider
    from maillink.providers.graph import GraphProvider

    kinds: list[tuple[str, type]] = [
        ("Gmail adapters", GmailProvider),
        ("Graph adapters", GraphProvider),
        ("MSAL applications", msal.ClientApplication),
        ("requests sessions", requests.Session),
    ]
    return ", ".join(f"{alive(kind)} {name}" for name, kind in kinds)


def top(n: int) -> None:
    """The lines that allocated most of what is held now."""
    snapshot = tracemalloc.take_snapshot()
    for stat in snapshot.statistics("lineno")[:n]:
        print(f"{'':12}{stat}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--provider", choices=["gmail", "microsoft", "both"], default="both")
    parser.add_argument("--small", type=int, default=50, help="mailboxes of the first sample")
    parser.add_argument("--large", type=int, default=500, help="mailboxes of the second sample")
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--pg", default=PG, help="a PostgreSQL server's URL (a database is made)")
    parser.add_argument("--top", type=int, default=0, help="print the N largest allocation sites")
    args = parser.parse_args(argv)
    if not 2 < args.small < args.large:
        parser.error("--small must be more than 2 and less than --large")
    tracemalloc.start(1)
    print(f"python {sys.version.split()[0]}; tracemalloc on", flush=True)
    providers = ["gmail", "microsoft"] if args.provider == "both" else [args.provider]
    for provider in providers:
        measure(provider, args)


if __name__ == "__main__":
    main()
