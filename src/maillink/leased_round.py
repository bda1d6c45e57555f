"""One mailbox round under its lease: renewed in the background while the round works, every
write fenced, the mailbox released with its next run (docs/how-it-works.md, "Leases and the schedule").

`daemon.py` decides which mailboxes to take and when; this module is what holding one means.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from maillink.errors import ConfigError
from maillink.linking.linker import Linker
from maillink.outbox import Outbox
from maillink.providers.base import MailProvider
from maillink.schedule import Schedule
from maillink.store import Store, accounts, leases
from maillink.store.accounts import Account
from maillink.store.leases import FencedStore, Lease, LeaseLost
from maillink.sync import CrmRetry, RoundResult, Syncer

log = logging.getLogger("maillink.daemon")

HELD_ELSEWHERE = "another daemon is syncing it"
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def is_conflict(exc: BaseException) -> bool:
    """A write that lost a race with another daemon's (the same email reaching two mailboxes,
    the same person cached twice): the round is worth running again at once, not backing off."""
    if isinstance(exc, IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return getattr(exc.orig, "sqlstate", None) in CONFLICT_SQLSTATES
    return False


def _now() -> datetime:
    return datetime.now(UTC)


def schedule_of(app: Any) -> Schedule:
    sync = app.settings.sync
    return Schedule(
        interval=float(sync.interval_seconds),
        jitter=float(sync.jitter_seconds),
        max_backoff=float(sync.max_backoff_seconds),
    )


class LeaseKeeper:
    """Renews the leases this daemon holds, in a background thread, every third of their length.

    A lease that cannot be renewed (it expired, another daemon took it) has its `lost` event set:
    the round working on it stops after the page in hand, and its writes are refused anyway.
    """

    def __init__(
        self,
        store: Store,
        duration: timedelta,
        *,
        clock: Callable[[], datetime] = _now,
        on_lost: Callable[[Lease], None] = lambda lease: None,
    ) -> None:
        self.store = store
        self.duration = duration
        self.clock = clock
        self.on_lost = on_lost
        self._held: dict[int, tuple[Lease, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maillink-leases", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def hold(self, lease: Lease) -> threading.Event:
        """Renew `lease` from now on; returns the event set when it is lost (the same event
        when the lease is held already)."""
        with self._lock:
            held = self._held.get(lease.account_id)
            if held is not None and held[0] == lease:
                return held[1]
            lost = threading.Event()
            self._held[lease.account_id] = (lease, lost)
            return lost

    def drop(self, lease: Lease) -> None:
        with self._lock:
            held = self._held.get(lease.account_id)
            if held is not None and held[0] == lease:
                del self._held[lease.account_id]

    def held(self) -> list[Lease]:
        with self._lock:
            return [lease for lease, _ in self._held.values()]

    def renew_all(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for lease, lost in held:
            if lost.is_set():
                continue
            try:
                with self.store.transaction() as conn:
                    leases.renew(conn, lease, now=self.clock(), duration=self.duration)
            except LeaseLost:
                with self._lock:
                    still_held = self._held.get(lease.account_id, (None, None))[0] == lease
                if still_held:  # not a lease its round released since the loop began
                    lost.set()
                    self.on_lost(lease)
            except SQLAlchemyError as exc:  # the store is away: the lease may expire meanwhile
                log.warning(
                    "cannot renew a lease: %s",
                    type(exc).__name__,
                    extra={"account_id": lease.account_id},
                )

    def _run(self) -> None:
        every = max(self.duration.total_seconds() / 3, 0.2)
        while not self._stop.wait(every):
            self.renew_all()


def either(should_stop: Callable[[], bool], lost: threading.Event) -> Callable[[], bool]:
    """Stop when asked to, or once the lease is lost."""
    return lambda: should_stop() or lost.is_set()


def sync_mailbox(
    app: Any,
    account: Account,
    lease: Lease,
    *,
    should_stop: Callable[[], bool],
    provider: MailProvider | None = None,
    retry: CrmRetry | None = None,
) -> RoundResult:
    """One round of one mailbox, every write fenced by `lease` (`LeaseLost` once it is lost);
    with `retry`, transient CRM failures are tried again within the round."""
    fenced = FencedStore(app.store, lease)
    if provider is None:
        try:
            provider = app.provider_for(account)
        except ConfigError as exc:
            result = RoundResult(account=account.email, error=str(exc))
            with fenced.transaction() as conn:
                accounts.synced(conn, account.id, result.error)
            return result
    linker = Linker(fenced, app.facts, app.policy())
    syncer = Syncer(fenced, linker, Outbox(fenced, app.crm, redecide=linker.redecide))
    return syncer.run(account, provider, should_stop=should_stop, retry=retry)


def held_elsewhere(store: Store, account: Account) -> RoundResult:
    """The result of a mailbox skipped because a live process holds it: who, until when."""
    with store.engine.connect() as conn:
        state = leases.state(conn, account.id)
    return RoundResult(
        account=account.email,
        skipped=HELD_ELSEWHERE,
        held_by=state.owner if state is not None else None,
        held_until=state.expires_at if state is not None else None,
    )


def finish(
    store: Store,
    lease: Lease,
    result: RoundResult | None,
    schedule: Schedule,
    *,
    now: datetime,
    rng: random.Random | None = None,
    conflict: bool = False,
) -> bool:
    """Release the mailbox with its next run: the interval after a good round, backoff after an
    error, at once after a round stopped halfway, not run (`result` None) or that lost a race
    with another daemon's write (`conflict`)."""
    failures = lease.failures
    if result is None or result.stopped or conflict:
        next_run = now
    elif result.error is not None:
        failures += 1
        next_run = schedule.after_failure(now, failures, retry_after=result.retry_after, rng=rng)
    else:
        failures = 0
        next_run = schedule.after_success(now, rng)
    with store.transaction() as conn:
        return leases.release(conn, lease, next_run_at=next_run, failures=failures)


@dataclass
class Holding:
    """A one-off job's hold on a mailbox (a backfill): the syncer to use and when to stop.

    `syncer` is None when another daemon kept the mailbox for the whole wait. The job sets
    `result`, which gives the mailbox its next run when the hold ends.
    """

    account: Account
    syncer: Syncer | None
    should_stop: Callable[[], bool]
    result: RoundResult | None = None


@contextmanager
def hold_mailbox(
    app: Any,
    account: Account,
    *,
    should_stop: Callable[[], bool],
    wait: float | None = None,
    poll: float = 0.5,
) -> Iterator[Holding]:
    """Hold `account`'s lease for a one-off job, as a daemon holds it for a round: the daemons
    leave the mailbox alone meanwhile, and the job's writes are fenced like theirs. Waits up to
    `wait` seconds (two lease lengths: a crashed holder's lease expires meanwhile) for a daemon's
    round to end."""
    store: Store = app.store
    duration = timedelta(seconds=app.settings.sync.lease_seconds)
    owner = leases.daemon_id()
    deadline = time.monotonic() + (2 * duration.total_seconds() if wait is None else wait)
    while True:
        with store.transaction() as conn:
            leases.ensure(conn, _now())
            got = leases.acquire(
                conn,
                owner,
                now=_now(),
                duration=duration,
                limit=1,
                due_only=False,
                account_ids=[account.id],
            )
        if got or should_stop() or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    if not got:
        yield Holding(account, None, should_stop)
        return
    lease = got[0]
    keeper = LeaseKeeper(store, duration).start()
    lost = keeper.hold(lease)
    fenced = FencedStore(store, lease)
    linker = Linker(fenced, app.facts, app.policy())
    syncer = Syncer(fenced, linker, Outbox(fenced, app.crm, redecide=linker.redecide))
    holding = Holding(account, syncer, either(should_stop, lost))
    try:
        yield holding
    except LeaseLost:
        holding.result = RoundResult(
            account=account.email,
            error="another daemon took the mailbox over (this job stalled past its lease); "
            "run the same command again to resume",
        )
        return
    finally:
        keeper.drop(lease)
        keeper.stop()
    try:
        finish(store, lease, holding.result, schedule_of(app), now=_now())
    except SQLAlchemyError as exc:  # the lease expires on its own
        log.warning("cannot release the mailbox: %s", type(exc).__name__)
