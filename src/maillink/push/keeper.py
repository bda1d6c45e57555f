"""What keeps push subscriptions alive, whatever the provider: `Keeper`.

A keeper holds one subscription per active mailbox and watched resource of its kind (Gmail: a
watch on the mailbox; Graph: a subscription per synced folder), all pointing at one `target`
(the Pub/Sub topic, the notification URL; None: push off). The daemon calls `tick` from its loop:
every `check_every` seconds a check runs in the background and
- adds a pending row for each mailbox and resource that has none (`store.push.ensure`),
- makes or renews each due row (`store.push.due`: renewal time passed, a resumed mailbox, or a
  subscription made for another target), after taking it with the store's compare-and-set
  (`store.push.claim`) so that of several daemons only one calls the provider,
- stops the live ones no longer wanted (mailbox paused or gone, resource no longer watched,
  push turned off).
A provider's keeper says only what it watches in a mailbox (`watched`), how it reaches the
provider (`api`), and how a subscription is made (`make`) and stopped (`unmake`).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from maillink.errors import ConfigError
from maillink.providers.base import ProviderError
from maillink.store import accounts, push
from maillink.store.accounts import Account
from maillink.store.push import Subscription

if TYPE_CHECKING:
    from maillink.app import App

log = logging.getLogger("maillink.push")

RENEW_EVERY = timedelta(days=1)  # Gmail: renew daily; Graph: well inside its 10,080 minutes
CLAIM_FOR = timedelta(minutes=5)  # a claimed row is left alone this long by the other daemons
RETRY_AFTER = timedelta(minutes=15)  # after a failed provider call
CHECK_EVERY_SECONDS = 60.0
BATCH, MAX_BATCHES = 100, 50  # rows read at a time; a check makes at most 5,000


ApiT = TypeVar("ApiT")  # a provider's subscription calls for one mailbox


def now_utc() -> datetime:
    return datetime.now(UTC)


def renewal_time(now: datetime, expires_at: datetime) -> datetime:
    """When a subscription made at `now` and lasting until `expires_at` is renewed: a day later,
    or halfway to its expiry if that is sooner."""
    return min(now + RENEW_EVERY, now + max(expires_at - now, timedelta(0)) / 2)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass(frozen=True)
class Made:
    """What the provider answered a subscription call: its id, when it ends, and what else the
    row keeps (Graph's encrypted clientState, Gmail's historyId)."""

    external_id: str
    expires_at: datetime
    secret: str | None = None
    history_id: str | None = None


@dataclass
class CheckResult:
    """What one check did: subscriptions made or renewed, stopped, failed."""

    made: int = 0
    stopped: int = 0
    failed: int = 0

    @property
    def watched(self) -> int:  # Gmail's word
        return self.made

    @property
    def subscribed(self) -> int:  # Graph's word
        return self.made


class Keeper(ABC, Generic[ApiT]):
    """Keeps every active mailbox's subscriptions of `kind` on `target` (None: push off, the
    subscriptions left from before stopped at the first check). `api_for` gives a mailbox's
    provider calls (the keeper's `api` by default; tests pass a double)."""

    kind: ClassVar[str]  # the store's kind of row (store.push.GMAIL_WATCH, …)
    label: ClassVar[str]  # what the logs call one ("gmail watch")

    def __init__(
        self,
        app: App,
        target: str | None,
        *,
        clock: Callable[[], datetime] = now_utc,
        api_for: Callable[[Account], ApiT] | None = None,
        check_every: float = CHECK_EVERY_SECONDS,
    ) -> None:
        self.app = app
        self.target = target
        self.resources = tuple(self.watched())
        self.api_for: Callable[[Account], ApiT] = api_for or self.api
        self.clock = clock
        self.check_every = check_every
        self.batch = BATCH
        self._checked_at: float | None = None
        self._again = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- what a provider says --------------------------------------------------------------------
    @abstractmethod
    def watched(self) -> Sequence[str]:
        """The resources of a mailbox that each get a subscription."""

    @abstractmethod
    def api(self, account: Account) -> ApiT:
        """The mailbox's subscription calls, from its stored tokens."""

    @abstractmethod
    def make(self, account: Account, seen: Subscription, target: str, now: datetime) -> Made:
        """Make (or renew) `seen` at the provider for `target`; ProviderError/ConfigError when
        refused."""

    @abstractmethod
    def unmake(self, account: Account, subscription: Subscription) -> str | None:
        """Stop `subscription` at the provider; None when done (or already gone), else a
        one-line warning (it then expires by itself)."""

    # -- the daemon's periodic call --------------------------------------------------------------
    def tick(self) -> None:
        """Start a check in the background when one is due and none is running (cheap)."""
        with self._lock:
            now = time.monotonic()
            if self._thread is not None and self._thread.is_alive():
                return
            if not self._again:
                if self.target is None and self._checked_at is not None:
                    return  # push off: what was left from before was stopped at the first check
                if self._checked_at is not None and now - self._checked_at < self.check_every:
                    return
            self._again = False
            self._checked_at = now
            name = f"maillink-push-{self.kind}"
            self._thread = threading.Thread(target=self._check_logged, name=name, daemon=True)
            self._thread.start()

    def poke(self) -> None:
        """A subscription was made due now (a lifecycle notification): check at once, or again
        right after the check that is running."""
        with self._lock:
            self._again = True
        self.tick()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running check (and the one a poke asked for meanwhile)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            thread = self._thread
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if not self._again or (deadline is not None and time.monotonic() >= deadline):
                return
            self.tick()

    def _check_logged(self) -> None:
        while True:
            try:
                self.check()
            except SQLAlchemyError as exc:
                log.warning("%ss: the store failed: %s", self.label, type(exc).__name__)
            except Exception:
                log.exception("%ss: check failed", self.label)
            with self._lock:
                if not self._again:
                    return
                self._again = False

    # -- one check -------------------------------------------------------------------------------
    def check(self) -> CheckResult:
        """Make the missing subscriptions, renew the due ones, stop those no longer wanted."""
        result = CheckResult()
        store = self.app.store
        target = self.target
        with store.transaction() as conn:
            if target is not None:
                push.ensure(conn, self.kind, self.resources, self.clock())
            to_stop = push.to_stop(conn, self.kind, self.resources, all_live=target is None)
        for _ in range(MAX_BATCHES if target is not None else 0):
            assert target is not None
            # A claimed row leaves the due ones: each batch is new work (or another daemon's).
            with store.engine.connect() as conn:
                due = push.due(conn, self.kind, self.clock(), self.resources, target, self.batch)
            for subscription in due:
                outcome = self._renew(subscription, target)
                if outcome is not None:
                    result.made += outcome
                    result.failed += 1 - outcome
            if len(due) < self.batch:
                break
        for subscription in to_stop:
            if self._stop(subscription):
                result.stopped += 1
        return result

    def _renew(self, seen: Subscription, target: str) -> int | None:
        """1 when the subscription was made or renewed, 0 when it failed, None when another
        daemon had it."""
        now = self.clock()
        with self.app.store.transaction() as conn:
            if not push.claim(conn, seen, now + CLAIM_FOR, now):
                return None
            account = accounts.get_by_id(conn, seen.account_id)
        if account is None or account.status != accounts.ACTIVE:
            return None
        extra = {"event": self.kind, "account_id": account.id, "resource": seen.resource}
        try:
            made = self.make(account, seen, target, now)
        except (ProviderError, ConfigError) as exc:
            now = self.clock()
            with self.app.store.transaction() as conn:
                push.failed(
                    conn, seen.id, error=error_text(exc), retry_at=now + RETRY_AFTER, now=now
                )
            log.warning("%s failed: %s", self.label, error_text(exc), extra=extra)
            return 0
        now = self.clock()
        with self.app.store.transaction() as conn:
            push.made(
                conn,
                seen.id,
                external_id=made.external_id,
                target=target,
                expires_at=made.expires_at,
                renew_at=renewal_time(now, made.expires_at),
                now=now,
                secret=made.secret,
                history_id=made.history_id,
            )
        log.info("%s until %s", self.label, made.expires_at.isoformat(), extra=extra)
        return 1

    def _stop(self, subscription: Subscription) -> bool:
        now = self.clock()
        with self.app.store.transaction() as conn:
            if not push.claim(conn, subscription, None, now):
                return False
            account = accounts.get_by_id(conn, subscription.account_id)
        error = self.unmake(account, subscription) if account is not None else None
        with self.app.store.transaction() as conn:
            push.stopped(conn, subscription.id, self.clock(), error)
        log.info(
            "%s stopped%s",
            self.label,
            f": {error}" if error else "",
            extra={"event": f"{self.kind}_stop", "account_id": subscription.account_id},
        )
        return True

    # -- a pause or a removal (`maillink accounts`) ---------------------------------------------
    @classmethod
    def stop_mailbox(
        cls,
        app: App,
        account: Account,
        *,
        clock: Callable[[], datetime] = now_utc,
        api_for: Callable[[Account], ApiT] | None = None,
    ) -> str | None:
        """`stop_account` without a running keeper (`maillink accounts pause|remove`)."""
        return cls(app, None, clock=clock, api_for=api_for).stop_account(account)

    def stop_account(self, account: Account) -> str | None:
        """Stop the mailbox's subscriptions now, before it is paused or its tokens forgotten;
        None when there were none or they were stopped, else a one-line warning."""
        if account.provider != push.KINDS[self.kind]:
            return None
        with self.app.store.engine.connect() as conn:
            kept = [
                s for s in push.for_account(conn, account.id, self.kind) if s.state != push.STOPPED
            ]
        outcomes = [self.unmake(account, s) if s.live else None for s in kept]
        with self.app.store.transaction() as conn:
            for subscription, warning in zip(kept, outcomes, strict=True):
                push.stopped(conn, subscription.id, self.clock(), warning)
        return next((w for w in outcomes if w), None)
