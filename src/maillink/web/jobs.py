"""Syncs the web app starts in the background: a mailbox's first sync right after it is connected.

One sync at a time per mailbox; each is a mailbox round like the daemon's (`maillink.daemon`):
it holds the mailbox's lease, so it never runs beside a daemon's round. While a daemon holds the
mailbox, the job waits for it (`held_by`: the page says the daemon is syncing it) and syncs once
it is given back. Each page is committed as it comes (the sync is resumable), and on shutdown the
running syncs finish their page in hand and stop.

An admin's team refreshes (the Team page's "Connect / refresh members") run here too: `TeamJobs`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from maillink.daemon.rounds import Rounds
from maillink.providers.base import Page
from maillink.store import accounts
from maillink.store.accounts import Account
from maillink.store.leases import LeaseLost, LeaseState
from maillink.sync import MAILBOX, RoundResult

if TYPE_CHECKING:
    from maillink.app import App
    from maillink.onboarding.team import MembersReport, TeamConnection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncJob:
    account_id: int
    email: str
    first: bool  # the first sync (a full listing) rather than a catch-up
    started_at: datetime
    finished_at: datetime | None = None
    pages: int = 0
    messages: int = 0  # new messages stored so far
    error: str | None = None
    held_by: str | None = None  # the daemon holding the mailbox while this job waits for it

    @property
    def running(self) -> bool:
        return self.finished_at is None


class SyncJobs:
    """The background syncs of this process, by account id."""

    def __init__(self, app: App, *, poll: float = 1.0) -> None:
        self.app = app
        self.poll = poll  # seconds between looks at a mailbox a daemon holds
        self._jobs: dict[int, SyncJob] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def get(self, account_id: int) -> SyncJob | None:
        with self._lock:
            return self._jobs.get(account_id)

    def start(self, account: Account) -> SyncJob:
        """Sync `account` in the background, unless a sync of it is already running."""
        with self._lock:
            job = self._jobs.get(account.id)
            if job is not None and job.running:
                return job
            with self.app.store.engine.connect() as conn:
                first = accounts.get_cursor(conn, account.id, MAILBOX) is None
            job = SyncJob(account.id, account.email, first, datetime.now(UTC))
            self._jobs[account.id] = job
            thread = threading.Thread(
                target=self._run, args=(account,), name=f"sync {account.email}", daemon=True
            )
            self._threads[account.id] = thread
        thread.start()
        return job

    def stop(self, timeout: float = 30.0) -> None:
        """Ask running syncs to stop after their page in hand, and wait for them."""
        self._stopping.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    def wait(self, account_id: int, timeout: float = 30.0) -> SyncJob | None:
        """Wait for the account's sync to end (for tests and shutdown); returns its last state."""
        with self._lock:
            thread = self._threads.get(account_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(account_id)

    def _update(self, account_id: int, **changes: Any) -> None:
        with self._lock:
            self._jobs[account_id] = replace(self._jobs[account_id], **changes)

    def _first(self, account: Account) -> bool:
        with self.app.store.engine.connect() as conn:
            return accounts.get_cursor(conn, account.id, MAILBOX) is None

    def _run(self, account: Account) -> None:
        job = self.get(account.id)
        assert job is not None

        def on_page(page: Page, result: RoundResult) -> None:
            self._update(account.id, pages=result.pages, messages=result.messages)

        def on_held(state: LeaseState) -> None:
            self._update(account.id, held_by=state.owner)

        error: str | None = None
        try:
            with (
                Rounds(self.app) as rounds,
                rounds.hold(
                    account,
                    should_stop=self._stopping.is_set,
                    wait=None,
                    poll=self.poll,
                    on_held=on_held,
                ) as held,
            ):
                if held.syncer is not None:
                    first = self._first(account)  # a daemon may have listed it meanwhile
                    self._update(account.id, held_by=None, first=first)
                    try:
                        error = held.sync(self.app.provider_for, first=first, on_page=on_page).error
                    except LeaseLost:
                        raise
                    except Exception as exc:  # one mailbox's failure is recorded on it
                        error = str(exc) or type(exc).__name__
                        log.warning("sync of %s failed: %s", account.email, error)
                        held.record_error(error)
            if held.lost:
                error = held.result.error if held.result is not None else None
        except Exception as exc:  # the store itself failed: the job says so
            error = str(exc) or type(exc).__name__
            log.warning("sync of %s failed: %s", account.email, error)
        self._update(account.id, finished_at=datetime.now(UTC), error=error)


@dataclass(frozen=True)
class TeamJob:
    """An admin's "Connect / refresh members" of one team connection (`via`: tenant, domain)."""

    via: str
    label: str
    started_by: str  # the admin's address
    started_at: datetime
    finished_at: datetime | None = None
    report: MembersReport | None = None
    error: str | None = None  # one line, as `maillink accounts refresh` prints it

    @property
    def running(self) -> bool:
        return self.finished_at is None


class TeamJobs:
    """The team refreshes of this process, by connection: one at a time per connection, each a
    listing of the directory and one transaction (`maillink.onboarding.team.refresh_team`)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._jobs: dict[str, TeamJob] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def get(self, via: str) -> TeamJob | None:
        with self._lock:
            return self._jobs.get(via)

    def start(self, connection: TeamConnection, started_by: str) -> TeamJob:
        """Refresh `connection` in the background, unless its refresh is already running."""
        with self._lock:
            job = self._jobs.get(connection.via)
            if job is not None and job.running:
                return job
            job = TeamJob(connection.via, connection.label, started_by, datetime.now(UTC))
            self._jobs[connection.via] = job
            thread = threading.Thread(
                target=self._run, args=(connection,), name=f"team {connection.via}", daemon=True
            )
            self._threads[connection.via] = thread
        thread.start()
        return job

    def wait(self, via: str, timeout: float = 60.0) -> TeamJob | None:
        """Wait for the connection's refresh to end (tests, shutdown); returns its last state."""
        with self._lock:
            thread = self._threads.get(via)
        if thread is not None:
            thread.join(timeout)
        return self.get(via)

    def stop(self, timeout: float = 30.0) -> None:
        """Wait for the running refreshes (each ends with its one transaction)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    def _run(self, connection: TeamConnection) -> None:
        from maillink.onboarding.team import refresh_team

        report: MembersReport | None = None
        try:
            refreshed = refresh_team(self.app, connection)
            if refreshed is None:
                error: str | None = f"{connection.label}: not configured"
            else:
                report = refreshed.report
                error = f"{connection.label}: {refreshed.error}" if refreshed.error else None
        except Exception as exc:  # the store itself failed: the page says so, in one line
            first = str(exc).strip().splitlines()[:1]
            error = f"{connection.label}: {first[0] if first else type(exc).__name__}"
            log.warning("team refresh %s failed: %s", connection.label, error)
        with self._lock:
            self._jobs[connection.via] = replace(
                self._jobs[connection.via],
                finished_at=datetime.now(UTC),
                report=report,
                error=error,
            )
