"""`maillink daemon`: every active mailbox synced on its schedule until asked to stop.

The main thread acquires due mailboxes while workers are free; each worker runs a mailbox round
(`rounds.py`: under the mailbox's lease, released with its next run, `schedule.py`). With
SQLite, one daemon does the work; with PostgreSQL, several daemons on several machines share the
store and the mailboxes divide themselves among them. One mailbox's failure is recorded on it
(`accounts.last_error`, then backoff) and never delays the others.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from maillink.crm.base import CRMError
from maillink.daemon.rounds import Holding, Rounds, is_conflict
from maillink.errors import ConfigError
from maillink.ops.metrics import Metrics, ObservedRetryPolicy, observe_requests_session
from maillink.providers.base import MailProvider
from maillink.push.gmail_watch import GmailWatches
from maillink.push.graph_subscriptions import GraphSubscriptions
from maillink.store import Store, accounts, leases
from maillink.store.accounts import Account
from maillink.store.leases import Lease, LeaseLost
from maillink.sync import RoundResult, poll_crm_changes

if TYPE_CHECKING:
    from maillink.app import App

log = logging.getLogger("maillink.daemon")

TICK_SECONDS = 0.5  # how often the daemon looks for due mailboxes
# How often the daemon checks that every mailbox has its lease row in its place (and keeps the
# statistics, `leases.ensure`), besides at its start: the store gives a mailbox its row as it is
# connected and moves it as its status changes, so this is a safety net only.
ENSURE_EVERY_SECONDS = 3600.0
# How often the members of the team connections (tenant-wide, domain-wide) are listed again
# (`maillink accounts refresh`): newcomers added, leavers paused; one daemon of several does it.
TEAM_REFRESH_EVERY = timedelta(days=1)
SERVICES = {"gmail": "gmail", "microsoft": "graph"}  # the API a mailbox's provider calls


def _now() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """Syncs every active mailbox on its schedule until asked to stop.

    The main thread acquires due mailboxes while workers are free; `workers` threads run the
    rounds; a `LeaseKeeper` renews the leases; a poller reads the CRM's changes; the ops endpoint
    (health, metrics, webhooks) runs beside them. On stop, each worker finishes its page in hand,
    commits, and releases its mailbox due at once, so another daemon can go on with it.
    """

    def __init__(
        self,
        app: App,
        *,
        should_stop: Callable[[], bool],
        owner: str | None = None,
        metrics: Metrics | None = None,
        workers: int | None = None,
        out: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
        tick: float = TICK_SECONDS,
    ) -> None:
        self.app = app
        self.store: Store = app.store
        self.should_stop = should_stop
        self.owner = owner or leases.daemon_id()
        self.metrics = metrics or Metrics()
        settings = app.settings
        default_workers = 1 if self.store.engine.dialect.name == "sqlite" else 4
        self.workers = workers or settings.sync.workers or default_workers
        self.crm_poll_seconds = float(settings.daemon.crm_poll_seconds)
        self.out = out
        self.clock = clock
        self.rng = rng or random.Random()
        self.tick = tick
        self.rounds = Rounds(
            app,
            owner=self.owner,
            clock=clock,
            rng=self.rng,
            on_lost=self._lost,
            on_takeover=lambda lease: self.metrics.lease_takeovers.inc(),
        )
        self.keeper = self.rounds.keeper
        self._queue: queue.Queue[Lease | None] = queue.Queue()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._poke = threading.Event()
        self._beat = time.monotonic()
        # Gmail push (issue 12): each active mailbox's users.watch made and renewed by the daemon.
        self.watches = GmailWatches(app, settings.gmail.push_topic, clock=clock)
        # Graph change notifications: a subscription per Microsoft mailbox and synced folder.
        self.graph_subscriptions = GraphSubscriptions(
            app, settings.microsoft.notification_url, clock=clock
        )
        # Built now: a configuration problem stops the daemon before any work.
        self.crm = app.crm
        _ = app.facts
        http = getattr(self.crm, "http", None)
        if http is not None and hasattr(http, "session"):
            observe_requests_session(http.session, self.metrics, "pipedrive")

    # -- what the ops endpoint asks ----------------------------------------------------------
    def wake(self, account_id: int) -> None:
        """A push notification: the mailbox is due now (the main loop looks at once)."""
        with self.store.transaction() as conn:
            leases.wake(conn, account_id, self.clock())
        self._poke.set()

    def status(self) -> dict[str, object]:
        return {
            "owner": self.owner,
            "workers": self.workers,
            "leases_held": sorted(lease.account_id for lease in self.keeper.held()),
        }

    def alive(self) -> bool:
        return time.monotonic() - self._beat < max(30.0, 20 * self.tick)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        threads = [
            threading.Thread(target=self._work, name=f"maillink-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        poller = threading.Thread(target=self._poll_crm, name="maillink-crm-poll", daemon=True)
        self.keeper.start()
        for thread in threads:
            thread.start()
        poller.start()
        self._say(f"maillink daemon {self.owner}: {self.workers} worker(s)")
        log.info(
            "daemon started",
            extra={"event": "start", "owner": self.owner, "workers": self.workers},
        )
        self._loop()  # a second signal (KeyboardInterrupt) leaves at once, pages unfinished
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()  # each worker finishes its page in hand and gives its mailbox back
        self.keeper.stop()
        poller.join(timeout=5)
        log.info("daemon stopped", extra={"event": "stop", "owner": self.owner})

    def _loop(self) -> None:
        ensured_at: float | None = None  # at the start, then every ENSURE_EVERY_SECONDS
        while not self.should_stop():
            self._beat = time.monotonic()
            if ensured_at is None or self._beat - ensured_at >= ENSURE_EVERY_SECONDS:
                try:
                    with self.store.transaction() as conn:
                        leases.ensure(conn, self.clock())
                        refresh = accounts.claim_team_refresh(
                            conn, self.clock(), TEAM_REFRESH_EVERY
                        )
                    ensured_at = self._beat
                    if refresh:
                        threading.Thread(
                            target=self._refresh_teams, name="maillink-teams", daemon=True
                        ).start()
                except SQLAlchemyError as exc:
                    log.warning("store unavailable: %s", type(exc).__name__)
            self._acquire()
            self.watches.tick()  # a check in the background every minute: watches due, stopped
            self.graph_subscriptions.tick()  # the same for Graph's subscriptions
            self._poke.wait(self.tick)
            self._poke.clear()

    def _acquire(self) -> None:
        with self._busy_lock:
            free = self.workers - self._busy
        if free <= 0:
            return
        held = {lease.account_id for lease in self.keeper.held()}
        try:
            got = self.rounds.acquire(limit=free, exclude=held)
        except SQLAlchemyError as exc:
            log.warning("cannot acquire mailboxes: %s", type(exc).__name__)
            return
        for lease in got:
            self.keeper.hold(lease)
            with self._busy_lock:
                self._busy += 1
            self.metrics.leases_held.set(len(self.keeper.held()))
            self._queue.put(lease)

    def _work(self) -> None:
        while True:
            lease = self._queue.get()
            if lease is None:
                return
            try:
                self._round(lease)
            except Exception:  # never lose a worker: the next round of the mailbox retries
                log.exception("worker failed", extra={"account_id": lease.account_id})
            finally:
                self.keeper.drop(lease)
                with self._busy_lock:
                    self._busy -= 1
                self.metrics.leases_held.set(len(self.keeper.held()))
                self._poke.set()

    def _lost(self, lease: Lease) -> None:
        self.metrics.leases_lost.inc()
        log.warning(
            "lease lost: the mailbox's round stops",
            extra={"event": "lease_lost", "account_id": lease.account_id},
        )

    def _provider(self, account: Account) -> MailProvider:
        """The mailbox's adapter for this round, dropped when the round ends: an idle mailbox
        costs the daemon no client. What a round needs from the rounds before (the access token
        and its expiry, MSAL's cache) is in the store, read with the mailbox; what is costly to
        build (the API description, the connection pools, the MSAL application) is shared by
        every mailbox of the process."""
        service = SERVICES.get(account.provider, account.provider)
        policy = ObservedRetryPolicy(metrics=self.metrics, service=service)
        return self.app.provider_for(account, policy=policy)

    def _round(self, lease: Lease) -> None:
        try:
            start = self._account(lease.account_id)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The database dropped the connection (a restart, an idle timeout): the pool has
            # discarded its connections, so the round goes on with a fresh one.
            start = self._account(lease.account_id)
        if start is None or start.account.status != accounts.ACTIVE:
            self.rounds.release(lease, None)
            return
        account = start.account
        extra = {"account_id": account.id, "account": account.email}
        with self.rounds.hold(
            account, lease=lease, should_stop=self.should_stop, start=start
        ) as job:
            started = time.monotonic()
            self._sync(job, extra)
            assert job.result is not None
            self._done(job.result, extra, seconds=round(time.monotonic() - started, 3))
        if job.lost:
            self.metrics.rounds.labels("lease_lost").inc()
            log.warning("lease lost: round abandoned, nothing more written", extra=extra)

    def _account(self, account_id: int) -> accounts.RoundStart | None:
        """The round's opening read, in one statement: the mailbox, its pending work and its
        cursor (handed to the syncer, which does not read them again)."""
        with self.store.engine.connect() as conn:
            return accounts.round_start(conn, account_id, datetime.now(UTC))

    def _sync(self, job: Holding, extra: dict[str, object]) -> None:
        try:
            job.sync(self._provider)
        except LeaseLost:
            raise
        except Exception as exc:  # a bug or the store: this mailbox's failure, not the daemon's
            job.conflict = is_conflict(exc)
            if job.conflict:
                log.info("round lost a race with another daemon; again at once", extra=extra)
            else:
                log.error("round failed", exc_info=exc, extra=extra)
            error = f"{type(exc).__name__}: {exc}"[:2000]
            job.result = RoundResult(account=job.account.email, error=error)
            with contextlib.suppress(LeaseLost, SQLAlchemyError):
                job.record_error(error)

    def _done(self, result: RoundResult, extra: dict[str, object], *, seconds: float) -> None:
        self._count(result)
        if result.messages or result.error:
            self._say(
                f"{result.account}: {result.messages} new messages"
                + (f"; error: {result.error}" if result.error else "")
            )
        level = logging.WARNING if result.error else logging.INFO
        if result.messages or result.error or result.stopped:
            log.log(
                level,
                "round done: %d new messages over %d pages",
                result.messages,
                result.pages,
                extra={
                    **extra,
                    "event": "round",
                    "messages": result.messages,
                    "pages": result.pages,
                    "activities_created": result.delivery.created,
                    "activities_updated": result.delivery.updated,
                    "error": result.error,
                    "stopped": result.stopped,
                    "seconds": seconds,
                },
            )

    def _count(self, result: RoundResult) -> None:
        outcome = "stopped" if result.stopped else "error" if result.error else "ok"
        self.metrics.rounds.labels(outcome).inc()
        self.metrics.messages.inc(result.messages)
        for reason, count in result.reasons.items():
            self.metrics.links.labels(reason).inc(count)

    def _refresh_teams(self) -> None:
        """The team connections' members listed again (daily, by the daemon that claimed it)."""
        from maillink.onboarding.team import refresh_teams

        try:
            done = refresh_teams(self.app)
        except Exception as exc:  # a thread's last resort: logged, tried again tomorrow
            log.warning("team refresh failed: %s", type(exc).__name__)
            return
        for refreshed in done:
            if refreshed.report is None:
                log.warning("%s: members refresh failed: %s", refreshed.label, refreshed.error)
            else:
                log.info(refreshed.report.summary(refreshed.label), extra={"event": "team_refresh"})

    def _poll_crm(self) -> None:
        """The fallback for missed webhooks: the CRM's changes, every `crm_poll_seconds`."""
        next_at = 0.0
        while not self.should_stop():
            if time.monotonic() >= next_at:
                next_at = time.monotonic() + self.crm_poll_seconds
                try:
                    forgotten = poll_crm_changes(self.store, self.crm)
                    self.metrics.crm_changes.labels("poll").inc(forgotten)
                except (CRMError, SQLAlchemyError) as exc:
                    log.warning("CRM changes poll failed: %s", exc)
            time.sleep(min(self.tick, 0.5))

    def _say(self, line: str) -> None:
        if self.out is not None:
            self.out(line)


def run_daemon(
    app: App,
    *,
    should_stop: Callable[[], bool],
    out: Callable[[str], None] | None = print,
    metrics: Metrics | None = None,
    serve_ops: bool | None = None,
    ops_port: int | None = None,
) -> None:
    """Sync on schedule until asked to stop, serving /healthz, /metrics and the webhooks
    (`[daemon]` in maillink.toml; `ops_port` overrides its port) beside the rounds."""
    from maillink.ops.server import OpsContext, OpsServer, create_ops_app
    from maillink.push.graph_notifications import GraphNotifications
    from maillink.push.pubsub_auth import PushVerifier

    credentials = app.credentials
    if app.settings.gmail.push_topic and not (
        credentials.gmail_push_token or credentials.gmail_push_oidc
    ):
        raise ConfigError(
            "[gmail] push_topic is set but credentials.json has no gmail_push: the daemon "
            "could not tell Pub/Sub's pushes from forged ones (add gmail_push service_account "
            "or token, see docs/configuration.md)"
        )
    daemon = Daemon(app, should_stop=should_stop, metrics=metrics, out=out)
    settings = app.settings.daemon
    server: OpsServer | None = None
    if settings.ops_enabled if serve_ops is None else serve_ops:
        daemon.metrics.watch_store(app.store)
        ctx = OpsContext(
            store=app.store,
            metrics=daemon.metrics,
            hubspot_webhooks=app.hubspot_webhooks(),
            webhook=credentials.webhook,
            gmail_push_token=credentials.gmail_push_token,
            gmail_push_verifier=(
                PushVerifier(credentials.gmail_push_oidc) if credentials.gmail_push_oidc else None
            ),
            graph_notifications=(
                GraphNotifications(
                    app.store,
                    app.cipher,
                    wake=daemon.wake,
                    renew=daemon.graph_subscriptions.poke,
                )
                if app.settings.microsoft.notification_url
                else None
            ),
            wake=daemon.wake,
            status=daemon.status,
            alive=daemon.alive,
        )
        port = settings.ops_port if ops_port is None else ops_port
        try:
            server = OpsServer(create_ops_app(ctx), settings.ops_host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"[daemon] ops_port: cannot listen on {settings.ops_host}:{port}: {exc.strerror}"
            ) from None
        if out is not None:
            out(f"maillink daemon: health, metrics and webhooks on {server.url}")
        log.info("ops endpoint listening", extra={"event": "ops", "url": server.url})
    try:
        daemon.run()
    finally:
        if server is not None:
            server.stop()
