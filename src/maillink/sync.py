"""One mailbox round: pull pages → store them with their cursor → link → deliver the outbox.

The daemon hands the `Syncer` a store fenced by the mailbox's lease (`store.leases.FencedStore`):
each page and its cursor, each decision and each outbox write commit only while the lease is this
daemon's; `LeaseLost` then ends the round, with nothing more written.

Given a `CrmRetry` (`sync --once` does), a round that the CRM failed transiently (5xx, timeouts,
a lost answer) tries the undelivered writes and the undecided messages again a few times after
short pauses, so that one run delivers everything unless the CRM stays down; a create whose
outcome was unknown is looked up by its maillink-id first, as always. What is still left is
counted on the result (`crm_writes_left`, `undecided_left`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from maillink.crm.base import CRM, CRMAuthError, CRMError, CRMRateLimited, CRMUnavailable
from maillink.crm.mirror import MirroredCRM
from maillink.linking.linker import Linker
from maillink.outbox import Delivery, Outbox
from maillink.providers.base import MailProvider, NeedsReauth, Page, ProviderError
from maillink.providers.retry import Throttled
from maillink.store import Store, accounts, cache, mail
from maillink.store import outbox as outbox_rows
from maillink.store.accounts import Account
from maillink.store.outbox import WorkLeft, left_for_later

log = logging.getLogger(__name__)

CHANGES_SINCE = "crm_changes_since"
MAILBOX = "mailbox"  # the incremental cursor of a mailbox
BACKFILL = "backfill"  # the cursor of a backfill in progress  # crm_state: the last time CRM changes were polled


class StoreKnown:
    """What the store holds for one mailbox, so that the adapters fetch only what is new."""

    def __init__(self, store: Store, account_id: int):
        self.store = store
        self.account_id = account_id

    def known_messages(self, provider_ids: Iterable[str]) -> set[str]:
        with self.store.engine.connect() as conn:
            return mail.known_messages(conn, self.account_id, provider_ids)

    def thread_dates(self, thread_keys: Iterable[str]) -> dict[str, datetime]:
        with self.store.engine.connect() as conn:
            return mail.thread_dates(conn, self.account_id, thread_keys)


@dataclass
class RoundResult:
    account: str
    pages: int = 0
    messages: int = 0
    listed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    delivery: Delivery = field(default_factory=Delivery)
    undecided: int = 0  # messages stored but left undecided (the CRM was unreachable)
    error: str | None = None
    status: str = accounts.ACTIVE
    stopped: bool = False
    retry_after: float | None = None  # the provider asked for this pause (seconds)
    skipped: str | None = None  # why the mailbox was not synced (another daemon holds it)
    held_by: str | None = None  # skipped: the lease's holder (`maillink.holders` id)
    held_until: datetime | None = None  # skipped: when its lease expires unless renewed
    taken_over_from: str | None = None  # the holder whose lease this round took (gone, expired)
    crm_retries: int = 0  # in-run retry passes made after transient CRM failures
    crm_writes_left: int = 0  # this mailbox's CRM writes not delivered when the round ended
    undecided_left: int = 0  # its messages still undecided (the CRM was unreachable)


@dataclass(frozen=True)
class CrmRetry:
    """How a one-off run retries what the CRM failed transiently: `attempts` more passes, the
    first after `backoff` seconds, each pause `factor` times the one before (0.5 + 1 + 2 s by
    default). `sleep` is injectable for tests."""

    attempts: int = 3
    backoff: float = 0.5
    factor: float = 2.0
    sleep: Callable[[float], None] = time.sleep

    def pauses(self) -> list[float]:
        return [self.backoff * self.factor**n for n in range(max(self.attempts, 0))]


RETRY_WINDOW = timedelta(hours=1)  # the outbox's longest backoff: in-run retries ignore it


def _merge(total: Delivery, part: Delivery) -> None:
    total.created += part.created
    total.updated += part.updated
    total.found_again += part.found_again
    total.failed += part.failed
    total.refused += part.refused
    total.redecided += part.redecided
    total.errors.extend(part.errors)
    total.parked_until = part.parked_until or total.parked_until


def poll_crm_changes(store: Store, crm: CRM, now: datetime | None = None) -> int:
    """Forget cached persons and items the CRM changed since the last poll; returns how many.

    Several daemons may poll at once: the new "since" is a compare-and-set on the old one, so
    the time never moves backwards; forgetting twice is harmless.
    """
    now = now or datetime.now(UTC)
    with store.transaction() as conn:
        last = cache.get_state(conn, CHANGES_SINCE)
    if last is None:
        # Whatever was cached before polling began may be stale: start from empty caches.
        try:
            with store.transaction() as conn:
                cache.forget_all(conn)
                cache.set_state(conn, CHANGES_SINCE, now.isoformat())
        except IntegrityError:
            pass  # another daemon started polling at the same moment
        return 0
    # With a mirror (`crm.mirror.MirroredCRM`), its refresh is the poll: one listing for both.
    changes = crm.changes_since(datetime.fromisoformat(last))
    with store.transaction() as conn:
        cache.forget(conn, emails=changes.emails, person_ids=changes.person_ids)
        cache.replace_state(conn, CHANGES_SINCE, last, changes.until.isoformat())
    return len(changes.emails) + len(changes.person_ids)


def refresh_crm_mirror(crm: CRM) -> None:
    """Bring the CRM mirror up to date (filled the first time), when the CRM has one; a failure
    leaves it as it was: reads then go to the CRM (the one-off commands call it at their start)."""
    if isinstance(crm, MirroredCRM):
        try:
            crm.refresh()
        except CRMError as exc:
            log.warning("CRM mirror not refreshed: %s", exc)


class Syncer:
    """Runs mailbox rounds. An idle round (nothing new at the provider, nothing undecided or due
    in the outbox) reads the mailbox's pending work once and its cursor, asks the provider once,
    and writes nothing: an unchanged cursor is not written again.

    `refresh` (when given) brings the linker's policy up to date; it is called only before
    something is linked. Without `record_sync`, `last_sync_at`/`last_error` are left to the
    caller (a leased round records them as it releases the mailbox, `daemon.rounds.finish`).
    """

    def __init__(
        self,
        store: Store,
        linker: Linker,
        outbox: Outbox,
        *,
        refresh: Callable[[], object] | None = None,
        record_sync: bool = True,
    ):
        self.store = store
        self.linker = linker
        self.outbox = outbox
        self.refresh = refresh
        self.record_sync = record_sync

    def run(
        self,
        account: Account,
        provider: MailProvider,
        *,
        since: datetime | None = None,
        dry_run: bool = False,
        on_page: Callable[[Page, RoundResult], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        cursor_name: str = MAILBOX,
        retry: CrmRetry | None = None,
        start: accounts.RoundStart | None = None,
    ) -> RoundResult:
        """Pull every page since the stored cursor; each page is committed with its cursor.

        With `retry`, what the CRM failed transiently is tried again within the round. `start`
        is the round's opening read when the caller made it with the mailbox
        (`accounts.round_start`, the daemon does): it is not read again."""
        result = RoundResult(account=account.email)
        work: WorkLeft | None = None
        linked = False
        try:
            if dry_run:
                self._dry_run(account, provider, since, result, on_page, should_stop)
            else:
                if start is not None and start.cursor_name == cursor_name:
                    work, cursor = start.work, start.cursor
                else:
                    with self.store.engine.connect() as conn:  # one read: pending work, cursor
                        work = outbox_rows.work_left(conn, account.id, datetime.now(UTC))
                        cursor = accounts.get_cursor(conn, account.id, cursor_name)
                if work.undecided:
                    self._catch_up(account, result)
                linked = self._pull(
                    account, provider, cursor, since, result, on_page, should_stop, cursor_name
                )
                if not result.stopped and (work.due or work.undecided or linked):
                    # What earlier rounds left (a CRM outage, a write to retry) is due as well.
                    _merge(result.delivery, self.outbox.deliver(account_id=account.id))
                if retry is not None and not result.stopped:
                    self._retry_crm(account, result, retry, should_stop)
        except NeedsReauth as exc:
            result.status = accounts.NEEDS_REAUTH
            result.error = f"needs re-authorisation: {exc}"
            with self.store.transaction() as conn:
                accounts.set_status(conn, account.id, accounts.NEEDS_REAUTH, result.error)
            return result
        except Throttled as exc:
            result.error = str(exc)
            result.retry_after = exc.retry_after
        except (ProviderError, CRMAuthError) as exc:
            result.error = str(exc)
        if not dry_run:
            if work is None or work.pending or work.undecided or result.messages or linked:
                with self.store.engine.connect() as conn:
                    left = left_for_later(conn, account.id)
                result.crm_writes_left, result.undecided_left = left
            if self.record_sync:
                with self.store.transaction() as conn:
                    accounts.synced(conn, account.id, result.error)
        return result

    def _retry_crm(
        self,
        account: Account,
        result: RoundResult,
        retry: CrmRetry,
        should_stop: Callable[[], bool],
    ) -> None:
        """Try the undecided messages and undelivered writes again, without waiting for their
        backoff, until none is left, the CRM parks writes (its daily budget) or the attempts run
        out; a short pause comes first once the CRM has failed in this run."""
        for pause in retry.pauses():
            with self.store.engine.connect() as conn:
                writes, undecided = left_for_later(conn, account.id)
            if not (writes or undecided) or result.delivery.parked_until or should_stop():
                return
            if result.delivery.failed or result.undecided:
                retry.sleep(pause)
            result.crm_retries += 1
            if undecided:
                result.error = None  # only linking sets it here; set again if it fails again
                self._catch_up(account, result)
            due_by = datetime.now(UTC) + RETRY_WINDOW
            _merge(result.delivery, self.outbox.deliver(account_id=account.id, due_by=due_by))

    def backfill(
        self,
        account: Account,
        provider: MailProvider,
        *,
        since: datetime | None = None,
        dry_run: bool = False,
        on_page: Callable[[Page, RoundResult], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> RoundResult:
        """A full listing of the mailbox back to `since`, resumable, with its own cursor.

        The incremental cursor is replaced only when the listing is complete, so a backfill that
        is stopped halfway leaves the daemon's rounds as they were; running it again resumes.
        """
        if not dry_run:
            with self.store.transaction() as conn:
                accounts.set_backfill_since(conn, account.id, since)
        return self.run(
            account,
            provider,
            since=since,
            dry_run=dry_run,
            on_page=on_page,
            should_stop=should_stop,
            cursor_name=BACKFILL,
        )

    def _link(self, account: Account, thread_ids: Iterable[int], result: RoundResult) -> None:
        if self.refresh is not None:
            self.refresh()
        try:
            result.reasons.update(self.linker.decide(account, thread_ids))
        except (CRMUnavailable, CRMRateLimited) as exc:
            # Mail keeps syncing; the messages stay undecided and are decided next round.
            result.undecided += 1
            result.error = f"CRM unavailable, linking postponed: {exc}"
            if isinstance(exc, CRMRateLimited) and exc.daily and not result.delivery.parked_until:
                # The day's budget is spent: no retry within this run can help.
                until = datetime.now(UTC) + timedelta(seconds=max(exc.retry_after, 60))
                result.delivery.parked_until = until

    def _catch_up(self, account: Account, result: RoundResult) -> None:
        with self.store.engine.connect() as conn:
            pending = mail.undecided_threads(conn, account.id)
        if pending:
            self._link(account, pending, result)

    def _pull(
        self,
        account: Account,
        provider: MailProvider,
        cursor: str | None,
        since: datetime | None,
        result: RoundResult,
        on_page: Callable[[Page, RoundResult], None] | None,
        should_stop: Callable[[], bool],
        cursor_name: str,
    ) -> bool:
        """Store each page with its cursor (`cursor`: the stored one), link what it touched;
        whether anything was linked."""
        known = StoreKnown(self.store, account.id)
        linked = False
        for page in provider.pull(cursor, known, since=since):
            touched: list[int] = []
            moved = page.cursor is not None and page.cursor != cursor
            if page.messages or page.removed or moved:  # an empty page at the same cursor: idle
                with self.store.transaction() as conn:
                    touched = list(
                        mail.save_messages(conn, account.id, page.messages, dict(page.thread_dates))
                    )
                    if page.removed:
                        mail.mark_removed(conn, account.id, page.removed)
                    if page.cursor is not None and moved:
                        accounts.set_cursor(conn, account.id, page.cursor, cursor_name)
                        cursor = page.cursor
            result.pages += 1
            result.messages += len(page.messages)
            result.listed += page.listed
            if touched:
                self._link(account, touched, result)
                linked = True
                _merge(result.delivery, self.outbox.deliver(account_id=account.id))
            if on_page:
                on_page(page, result)
            if should_stop():
                result.stopped = True
                return linked
        if cursor_name != MAILBOX:
            # The listing is complete: its final cursor becomes the mailbox's incremental cursor.
            with self.store.transaction() as conn:
                final = accounts.get_cursor(conn, account.id, cursor_name)
                if final is not None:
                    accounts.set_cursor(conn, account.id, final, MAILBOX)
                accounts.delete_cursor(conn, account.id, cursor_name)
        return linked

    def _dry_run(
        self,
        account: Account,
        provider: MailProvider,
        since: datetime | None,
        result: RoundResult,
        on_page: Callable[[Page, RoundResult], None] | None,
        should_stop: Callable[[], bool],
    ) -> None:
        """Decide everything, write nothing: the store's transaction is rolled back, no CRM write."""
        with self.store.rolled_back() as conn:
            cursor = accounts.get_cursor(conn, account.id)
            known = StoreKnown(self.store, account.id)
            for page in provider.pull(cursor, known, since=since):
                touched = mail.save_messages(
                    conn, account.id, page.messages, dict(page.thread_dates)
                )
                result.pages += 1
                result.messages += len(page.messages)
                result.listed += page.listed
                result.reasons.update(self.linker.decide(account, touched, conn=conn))
                if on_page:
                    on_page(page, result)
                if should_stop():
                    result.stopped = True
                    return
