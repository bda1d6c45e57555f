"""Gmail push run by maillink: each active mailbox's `users.watch` made, renewed and stopped.

With `[gmail] push_topic` set, every active Gmail mailbox gets a watch on the INBOX and SENT
labels (the labels maillink syncs: a change elsewhere, a draft saved or spam arriving, would only
wake a round that finds nothing). A watch lasts at most 7 days; Google suggests renewing it daily,
so each one is renewed a day after it was made (or halfway to its expiry, if that comes first).
The daemon checks every `CHECK_EVERY_SECONDS` with one query for the watches due, missing, or
made for another topic. Several daemons may check at once: each due row is claimed by a
compare-and-set in the store (`store.push.claim`), and only the daemon that moved it calls Gmail.
A mailbox paused (or needing re-authorisation) has its watch stopped (`users.stop`); a removed one
too, by `maillink accounts remove` before its tokens are forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from google.oauth2.credentials import Credentials
from sqlalchemy.exc import SQLAlchemyError

from maillink.errors import ConfigError
from maillink.providers.base import ProviderError
from maillink.providers.gmail_api import GmailApi, classify
from maillink.providers.retry import RetryPolicy
from maillink.store import accounts, push
from maillink.store.accounts import Account
from maillink.store.push import Subscription

if TYPE_CHECKING:
    from maillink.app import App

log = logging.getLogger("maillink.push")

WATCH_LABELS = ("INBOX", "SENT")  # the labels maillink syncs (providers/gmail.py)
RENEW_EVERY = timedelta(days=1)  # Google: a watch lasts at most 7 days, renew it daily
CLAIM_FOR = timedelta(minutes=5)  # a claimed row is left alone this long by the other daemons
RETRY_AFTER = timedelta(minutes=15)  # after a failed watch call
DEFAULT_LIFETIME = timedelta(days=1)  # if Gmail's answer has no expiration (it always has one)
CHECK_EVERY_SECONDS = 60.0
BATCH, MAX_BATCHES = 100, 50  # watches read at a time; a check makes at most 5,000
WATCH_UNITS = {"users.watch": 100, "users.stop": 50}  # Gmail's quota units for these calls


def _now() -> datetime:
    return datetime.now(UTC)


class WatchApi(GmailApi):
    """The Gmail API with `users.watch` and `users.stop`, metered and retried like the rest."""

    def __init__(self, credentials: Credentials, **kwargs: Any) -> None:
        super().__init__(credentials, **kwargs)
        self._units = {**self._units, **WATCH_UNITS}

    def watch(self, topic: str, label_ids: tuple[str, ...] = WATCH_LABELS) -> dict[str, Any]:
        """Start (or renew) the mailbox's watch; Gmail answers its historyId and expiration."""
        body = {"topicName": topic, "labelIds": list(label_ids), "labelFilterBehavior": "include"}
        try:
            return self._call(
                "users.watch", lambda: self._round.users.watch(userId="me", body=body)
            )
        finally:
            self.release()

    def stop(self) -> None:
        """Stop the mailbox's push notifications (Gmail answers 204, no body)."""
        units = self._units["users.stop"]

        def attempt() -> None:
            self._spend(units)
            try:
                self._round.users.stop(userId="me").execute(num_retries=0)
            finally:
                self.quota_units += units  # answered, or refused: the call counts

        try:
            self._policy.call(attempt, classify=classify, what="gmail users.stop")
        finally:
            self.release()


def watch_api(app: App, account: Account, policy: RetryPolicy | None = None) -> WatchApi:
    """The mailbox's Gmail API for its watch calls (its stored tokens; a refreshed access token
    is kept for its next round, as a round's is)."""
    client = app.credentials.google_client()
    tokens = app.tokens(account)
    expiry = tokens.get("access_token_expiry")
    credentials = Credentials(
        token=tokens.get("access_token"),
        expiry=datetime.fromisoformat(expiry).replace(tzinfo=None) if expiry else None,
        refresh_token=tokens["refresh_token"],
        client_id=client["client_id"],
        client_secret=client.get("client_secret"),
        token_uri=client["token_uri"],
        scopes=tokens.get("scopes"),
    )
    pacers = app.gmail_pacers
    return WatchApi(
        credentials,
        api_endpoint=app.settings.gmail.api_endpoint,
        http_timeout=30.0,
        batch_size=1,
        policy=policy or RetryPolicy(),
        pacer=pacers.for_mailbox(account.email) if pacers else None,
        quota_model=app.settings.gmail.quota_model,
        on_token=lambda token, at: app._keep_access_token(account, tokens, token, at),
    )


ApiFor = Callable[[Account], WatchApi]


@dataclass
class CheckResult:
    """What one check did: watches made or renewed, stopped, failed."""

    watched: int = 0
    stopped: int = 0
    failed: int = 0


def _expiration(answer: dict[str, Any], now: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(int(answer["expiration"]) / 1000, UTC)
    except (KeyError, TypeError, ValueError, OverflowError):
        return now + DEFAULT_LIFETIME


def renewal_time(now: datetime, expires_at: datetime) -> datetime:
    """When a watch made at `now` and lasting until `expires_at` is renewed: a day later, or
    halfway to its expiry if that is sooner."""
    return min(now + RENEW_EVERY, now + max(expires_at - now, timedelta(0)) / 2)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


class GmailWatches:
    """Keeps every active Gmail mailbox's watch on `topic` (None: push off, watches stopped)."""

    def __init__(
        self,
        app: App,
        topic: str | None,
        *,
        clock: Callable[[], datetime] = _now,
        api_for: ApiFor | None = None,
        check_every: float = CHECK_EVERY_SECONDS,
    ) -> None:
        self.app = app
        self.topic = topic
        self.clock = clock
        self.api_for: ApiFor = api_for or (lambda account: watch_api(app, account))
        self.check_every = check_every
        self._checked_at: float | None = None
        self._thread: threading.Thread | None = None

    # -- the daemon's periodic call --------------------------------------------------------------
    def tick(self) -> None:
        """Start a check in the background when one is due and none is running (cheap)."""
        now = time.monotonic()
        if self._thread is not None and self._thread.is_alive():
            return
        if self.topic is None and self._checked_at is not None:
            return  # push off: the watches left from before were stopped at the first check
        if self._checked_at is not None and now - self._checked_at < self.check_every:
            return
        self._checked_at = now
        self._thread = threading.Thread(target=self._check_logged, name="maillink-push-watch")
        self._thread.daemon = True
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _check_logged(self) -> None:
        try:
            self.check()
        except SQLAlchemyError as exc:
            log.warning("gmail watches: the store failed: %s", type(exc).__name__)
        except Exception:
            log.exception("gmail watches: check failed")

    # -- one check ----------------------------------------------------------------------------
    def check(self) -> CheckResult:
        """Make the missing watches, renew the due ones, stop those of inactive mailboxes."""
        result = CheckResult()
        store = self.app.store
        with store.transaction() as conn:
            if self.topic is not None:
                push.ensure_gmail_watches(conn, self.clock())
            to_stop = push.gmail_watches_to_stop(conn, all_active=self.topic is None)
        topic = self.topic
        for _ in range(MAX_BATCHES if topic is not None else 0):
            assert topic is not None
            # A claimed watch leaves the due ones: each batch is new work (or another daemon's).
            with store.engine.connect() as conn:
                due = push.due_gmail_watches(conn, self.clock(), topic, BATCH)
            for subscription in due:
                outcome = self._renew(subscription)
                if outcome is not None:
                    result.watched += outcome
                    result.failed += 1 - outcome
            if len(due) < BATCH:
                break
        for subscription in to_stop:
            if self._stop(subscription, why="the mailbox is not active"):
                result.stopped += 1
        return result

    def _renew(self, seen: Subscription) -> int | None:
        """1 when the watch was made, 0 when it failed, None when another daemon had it."""
        assert self.topic is not None
        now = self.clock()
        with self.app.store.transaction() as conn:
            if not push.claim(conn, seen, now + CLAIM_FOR, now):
                return None
            account = accounts.get_by_id(conn, seen.account_id)
        if account is None or account.status != accounts.ACTIVE:
            return None
        extra = {"event": "gmail_watch", "account_id": account.id}
        try:
            answer = self.api_for(account).watch(self.topic)
        except (ProviderError, ConfigError) as exc:
            now = self.clock()
            with self.app.store.transaction() as conn:
                push.failed(
                    conn,
                    seen.id,
                    external_id=self.topic,
                    error=_error(exc),
                    retry_at=now + RETRY_AFTER,
                    now=now,
                )
            log.warning("gmail watch failed: %s", _error(exc), extra=extra)
            return 0
        now = self.clock()
        expires_at = _expiration(answer, now)
        history = answer.get("historyId")
        with self.app.store.transaction() as conn:
            push.watching(
                conn,
                seen.id,
                external_id=self.topic,
                expires_at=expires_at,
                renew_at=renewal_time(now, expires_at),
                history_id=str(history) if history is not None else None,
                now=now,
            )
        log.info("gmail watch until %s", expires_at.isoformat(), extra=extra)
        return 1

    def _stop(self, subscription: Subscription, *, why: str) -> bool:
        now = self.clock()
        with self.app.store.transaction() as conn:
            if not push.claim(conn, subscription, None, now):
                return False
            account = accounts.get_by_id(conn, subscription.account_id)
        error = stop_at_gmail(self.api_for, account) if account is not None else None
        with self.app.store.transaction() as conn:
            push.stopped(conn, subscription.id, self.clock(), error)
        log.info(
            "gmail watch stopped (%s)%s",
            why,
            f": {error}" if error else "",
            extra={"event": "gmail_watch_stop", "account_id": subscription.account_id},
        )
        return True


def stop_at_gmail(api_for: ApiFor, account: Account) -> str | None:
    """Call `users.stop` for the mailbox; None when done, else why not (the watch then expires
    by itself within 7 days, and its pushes are acknowledged and ignored)."""
    try:
        api_for(account).stop()
    except (ProviderError, ConfigError) as exc:
        return f"users.stop failed ({_error(exc)}); the watch expires by itself"
    return None


def stop_watches(
    app: App,
    account: Account,
    *,
    clock: Callable[[], datetime] = _now,
    api_for: ApiFor | None = None,
) -> str | None:
    """Stop the mailbox's Gmail watch now (a pause or a removal); None when there was none or it
    was stopped, else a one-line warning."""
    with app.store.engine.connect() as conn:
        active = [s for s in push.for_account(conn, account.id) if s.state != push.STOPPED]
    if not active or account.provider != "gmail":
        return None
    warning = None
    if any(s.state == push.ACTIVE_WATCH for s in active):
        warning = stop_at_gmail(api_for or (lambda a: watch_api(app, a)), account)
    with app.store.transaction() as conn:
        for subscription in active:
            push.stopped(conn, subscription.id, clock(), warning)
    return warning


def describe(subscriptions: list[Subscription], *, expected: bool) -> str:
    """A mailbox's push state for `maillink accounts`: "watching until …", "off", "failed: …",
    or "pending" when a watch is `expected` (push on, an active Gmail mailbox) but not made yet."""
    watch = next((s for s in subscriptions if s.kind == push.GMAIL_WATCH), None)
    if watch is None or watch.state in (push.STOPPED, push.PENDING):
        return "pending" if expected else "off"
    if watch.state == push.FAILED:
        until = (
            f" (the last watch lasts until {watch.expires_at:%Y-%m-%d %H:%M} UTC)"
            if watch.expires_at is not None
            else ""
        )
        return f"failed: {watch.last_error or 'unknown error'}{until}"
    assert watch.expires_at is not None
    return f"watching until {watch.expires_at:%Y-%m-%d %H:%M} UTC"
