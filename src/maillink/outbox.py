"""Delivers the CRM writes that decisions queued: retried, never duplicated.

Each email has one row in `activities` (its maillink-id): the activity it should be
(`desired`, `desired_version`) and what the CRM has (`crm_id`, `delivered_version`). Before a
create, the row is marked as attempted in its own commit; if the outcome is unknown (a crash, a
lost response), the next delivery first looks the activity up by its maillink-id.

Several daemons share the outbox: each delivers the rows of the mailboxes it holds
(`deliver(account_id=…)`, rows found through their owner message), through a store whose
transactions are fenced by that mailbox's lease (`store.leases.FencedStore`), so a daemon that
lost the mailbox writes no outbox state. Marking a row as attempted is a compare-and-set on its
attempt count: of two processes about to create the same activity, only one goes on.

What the CRM's answers mean for a row (docs/crm-writes.md says it for users):
- transient (5xx, timeouts, a burst 429): retried later with backoff; a spent daily budget parks
  every write until the reset;
- a refusal because a person or item the write names is gone (deleted, merged, archived since
  the decision): the caches of the thread's persons are expired, the thread is decided again and
  the new decision is delivered. Once per desired version: the same refusal of the same version
  again is a permanent failure;
- any other permanent refusal (a 4xx other than 401/403/429): the row is marked failed with the
  CRM's answer (`failed_at`, `last_error`) and not retried until `maillink outbox retry`.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from maillink.crm.activity import draft_from_json
from maillink.crm.base import (
    CRM,
    BatchWrites,
    CRMActivityGone,
    CRMAuthError,
    CRMError,
    CRMRateLimited,
    CRMRecordGone,
    CRMRefused,
    CRMUnavailable,
)
from maillink.store import Store, cache
from maillink.store import outbox as outbox_rows
from maillink.store.outbox import failed_count, pending_count

__all__ = ["Delivery", "Outbox", "failed_count", "pending_count"]

MAX_BATCH_CLAIM = 100  # rows claimed at once for a CRM that creates them in one request
# Plain creates claimed (and recorded as delivered) at once for a CRM that creates one a request:
# fewer commits, against more look-ups after a crash (at most this many).
CLAIM_AHEAD = 32
PARKED_UNTIL = "outbox_parked_until"  # crm_state: the daily budget is spent until then


def _now() -> datetime:
    return datetime.now(UTC)


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 5 * 2 ** min(attempts, 10)))


@dataclass
class Delivery:
    created: int = 0
    updated: int = 0
    found_again: int = 0  # created before an unknown outcome, found by maillink-id
    failed: int = 0  # transient failures: retried later
    parked_until: datetime | None = None
    errors: list[str] = field(default_factory=list)
    refused: int = 0  # refused for good: parked as failed until `maillink outbox retry`
    redecided: int = 0  # refused because a person or item was gone: the thread decided again


# Decides the given threads again (fresh CRM facts) and records the new decisions and writes.
Redecide = Callable[[Sequence[int]], object]


class _OneWriterAtATime:
    """`store` whose transactions, from any thread of this process, run one at a time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._lock, self._store.transaction() as conn:
            yield conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# What one CRM call of a delivery window gives back: its counts, its CRM error, the created id.
_Answer = tuple[Delivery, Exception | None, str | None]


class _Workers:
    """The threads that make one delivery window's CRM calls (up to `size` at once: the caller
    starts no more), and their answers in the order they end.

    Plain threads and C queues: a future and a `wait()` for each call cost a backfill about 5% of
    its CPU (callgrind: 190,000 instructions an email).
    """

    def __init__(self, size: int, call: Callable[[Any, bool], _Answer]) -> None:
        self._size = size
        self._call = call
        self._tasks: queue.SimpleQueue[tuple[Any, bool] | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[Any, _Answer | BaseException]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0

    def start(self, row: Any, claimed: bool) -> None:
        """Make the call for `row` on a free thread (a new one while fewer than `size` run)."""
        if self._running == len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._work, name=f"maillink-outbox_{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._running += 1
        self._tasks.put((row, claimed))

    def next_answer(self) -> tuple[Any, _Answer]:
        """The next call to end: its row and answer. What the call raised is raised here."""
        row, answer = self._answers.get()
        self._running -= 1
        if isinstance(answer, BaseException):
            raise answer
        return row, answer

    def stop(self) -> list[tuple[Any, _Answer]]:
        """Let the calls in flight end and the threads stop; the answers not taken (but those of
        calls that raised)."""
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        left: list[tuple[Any, _Answer]] = []
        while not self._answers.empty():
            row, answer = self._answers.get()
            if not isinstance(answer, BaseException):
                left.append((row, answer))
        return left

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            row, claimed = task
            answer: _Answer | BaseException
            try:
                answer = self._call(row, claimed)
            except BaseException as exc:  # CRMAuthError, or a fault: raised in the caller
                answer = exc
            self._answers.put((row, answer))


class Outbox:
    def __init__(
        self,
        store: Store,
        crm: CRM,
        clock: Callable[[], datetime] = _now,
        workers: int = 4,
        redecide: Redecide | None = None,
    ):
        # The workers' short transactions take turns here rather than in SQLite's busy handler,
        # which sleeps in steps of milliseconds when writers collide.
        self.store: Store = _OneWriterAtATime(store)  # type: ignore[assignment]
        self.crm = crm
        self.clock = clock
        self.workers = workers  # CRM writes in flight at once
        # Decides threads again after a refusal naming a gone record (`Linker.redecide`).
        # Without it, the thread's messages are left undecided: the next round decides them.
        self.redecide = redecide

    def parked_until(self) -> datetime | None:
        with self.store.engine.connect() as conn:  # a read: no writing (fenced) transaction
            value = cache.get_state(conn, PARKED_UNTIL)
        if value is None:
            return None
        until = datetime.fromisoformat(value)
        return until if until > self.clock() else None

    def deliver(
        self, *, batch: int = 200, account_id: int | None = None, due_by: datetime | None = None
    ) -> Delivery:
        """Deliver what is due, oldest first, until nothing is due or the CRM says stop.

        With `account_id`, only the rows whose email was stored first from that mailbox. With
        `due_by`, rows whose retry backoff ends by then are due too (the in-run retries of
        `sync --once`, `sync.CrmRetry`).
        """
        result = Delivery()
        parked = self.parked_until()
        if parked is not None:
            result.parked_until = parked
            return result
        done: set[str] = set()
        while True:
            rows = self._due(batch, exclude=done, account_id=account_id, due_by=due_by)
            if not rows:
                return result
            for row, error in self._deliver_window(rows, result):
                done.add(row["key"])
                if error is None:
                    continue
                try:
                    raise error
                except CRMRateLimited as exc:
                    if exc.daily:
                        until = self.clock() + timedelta(seconds=max(exc.retry_after, 60))
                        # Another daemon parking at the same moment wins the race: same effect.
                        with contextlib.suppress(IntegrityError), self.store.transaction() as conn:
                            cache.set_state(conn, PARKED_UNTIL, until.isoformat())
                        result.parked_until = until
                    else:
                        self._failed(row, str(exc), result)
                    return result
                except CRMAuthError:
                    raise
                except CRMRecordGone as exc:
                    if self._gone(row, exc, result):
                        done.discard(row["key"])  # decided again: its new write is due now
                        break  # the rows in hand may be stale now: read them again
                except CRMActivityGone as exc:
                    why = " (deleted in the CRM: `maillink outbox retry` creates it again)"
                    self._refused(row, exc, result, why, activity_gone=True)
                except CRMRefused as exc:
                    self._refused(row, exc, result)
                except (CRMUnavailable, CRMError) as exc:
                    self._failed(row, str(exc), result)

    def retry(self, keys: Sequence[str] | None = None) -> int:
        """Make failed writes due again (all of them without `keys`); how many were."""
        with self.store.transaction() as conn:
            return outbox_rows.make_failed_due(conn, keys)

    def _deliver_window(
        self, rows: list[Any], result: Delivery
    ) -> Iterator[tuple[Any, Exception | None]]:
        """Deliver `rows` with up to `workers` CRM calls in flight (their round trips overlap);
        yields each row and its error as it completes. When the caller stops (a full budget),
        no new row is started and the ones in flight are let finish.

        Plain creates are claimed a few at a time in one transaction, and recorded as delivered
        a few at a time: a crash in between only means a look-up by maillink-id next time.
        """
        if isinstance(self.crm, BatchWrites):
            yield from self._deliver_batches(rows, result, self.crm)
            return
        workers = max(1, self.workers)
        claim_ahead = max(CLAIM_AHEAD, 4 * workers)
        delivered: list[tuple[Any, str]] = []

        def one(row: Any, claimed: bool) -> _Answer:
            part = Delivery()
            try:
                if claimed:
                    crm_id = self.crm.create_activity(draft_from_json(row["desired"]))
                    part.created += 1
                    return part, None, crm_id
                self._deliver_one(row, part)
            except CRMAuthError:
                raise
            except CRMError as exc:
                return part, exc, None
            return part, None, None

        def merged(row: Any, answer: _Answer) -> tuple[Any, Exception | None]:
            part, error, created = answer
            if created is not None:
                delivered.append((row, created))  # only this thread touches `delivered`
            result.created += part.created
            result.updated += part.updated
            result.found_again += part.found_again
            if len(delivered) >= claim_ahead:
                self._record_delivered(delivered)
            return row, error

        waiting = iter(rows)
        ready: list[tuple[Any, bool]] = []  # rows to start next; plain creates claimed ahead

        def next_ones(count: int) -> tuple[list[tuple[Any, bool]], list[Any]]:
            """The next rows to start (up to `count`), and those another process has claimed
            (left to it). Plain creates are claimed `claim_ahead` at a time, in one commit."""
            others: list[Any] = []
            if not ready:
                batch = list(itertools.islice(waiting, claim_ahead))
                plain = [
                    r for r in batch if r["crm_id"] is None and r["attempt_started_at"] is None
                ]
                claimed = self._claim(plain)
                is_plain = {id(r) for r in plain}
                ready.extend(
                    (r, r["key"] in claimed)
                    for r in batch
                    if id(r) not in is_plain or r["key"] in claimed
                )
                others = [r for r in plain if r["key"] not in claimed]
            start, ready[:] = ready[:count], ready[count:]
            return start, others

        flying: dict[int, Any] = {}  # rows handed to a worker and not yet answered, by id
        calls = _Workers(workers, one)
        try:
            if workers == 1:
                while True:
                    start, others = next_ones(1)
                    if not start and not others:
                        return
                    for row in others:
                        yield row, None
                    for row, claimed in start:
                        yield merged(row, one(row, claimed))
            start, others = next_ones(workers)
            while True:
                for row in others:
                    yield row, None
                for row, claimed in start:
                    flying[id(row)] = row
                    calls.start(row, claimed)
                if not flying:
                    return
                row, answer = calls.next_answer()
                del flying[id(row)]
                yield merged(row, answer)
                start, others = next_ones(workers - len(flying))
        finally:
            # The caller stopped: creates still in flight have finished once the workers are
            # stopped; record the ones that went through, so that none is looked up again, and
            # give back the claims of creates never sent.
            for row, answer in calls.stop():
                created = answer[2]
                if created is not None:
                    delivered.append((row, created))
            self._record_delivered(delivered)
            self._release([row for row, claimed in ready if claimed])

    def _deliver_batches(
        self, rows: list[Any], result: Delivery, crm: BatchWrites
    ) -> Iterator[tuple[Any, Exception | None]]:
        """`_deliver_window` for a CRM that creates many activities a request: plain creates
        are claimed up to `crm.max_batch` (at most `MAX_BATCH_CLAIM`) at a time in one commit,
        sent in one call and recorded as delivered in one commit; the others (updates, look-ups
        after an unknown outcome) go one by one. Each row's own outcome is yielded: one refused
        draft fails only its row."""
        size = max(1, min(crm.max_batch, MAX_BATCH_CLAIM))
        waiting = iter(rows)
        while chunk := list(itertools.islice(waiting, size)):
            plain = [r for r in chunk if r["crm_id"] is None and r["attempt_started_at"] is None]
            is_plain = {id(r) for r in plain}
            for row in chunk:
                if id(row) not in is_plain:
                    yield row, self._deliver_alone(row, result)
            claimed = self._claim(plain)
            for row in plain:
                if row["key"] not in claimed:
                    yield row, None  # another process has claimed it: left to it
            sending = [r for r in plain if r["key"] in claimed]
            if not sending:
                continue
            drafts = [draft_from_json(r["desired"]) for r in sending]
            answers = list(zip(sending, crm.create_activities(drafts), strict=True))
            delivered = [(r, crm_id) for r, crm_id in answers if isinstance(crm_id, str)]
            result.created += len(delivered)
            self._record_delivered(delivered)
            unsent = [r for r, error in answers if isinstance(error, CRMRateLimited)]
            try:
                for row, outcome in answers:
                    if isinstance(outcome, CRMRateLimited):
                        unsent.remove(row)
                    yield row, None if isinstance(outcome, str) else outcome
            finally:
                # The caller stopped (a spent budget): creates the CRM turned away were not
                # carried out, so their claims are given back (no look-up next time).
                self._release(unsent)

    def _deliver_alone(self, row: Any, result: Delivery) -> Exception | None:
        """Deliver one row on its own (`_deliver_one`); the CRM's error, if any."""
        try:
            self._deliver_one(row, result)
        except CRMAuthError:
            raise
        except CRMError as exc:
            return exc
        return None

    def _claim(self, rows: list[Any]) -> set[str]:
        """Mark plain creates as attempted, in one commit, before they are sent; the keys this
        process claimed (a compare-and-set on the attempt count: of two processes about to create
        the same activity, only one goes on)."""
        if not rows:
            return set()
        with self.store.transaction() as conn:
            return outbox_rows.claim_creates(conn, rows, self.clock())

    def _release(self, rows: list[Any]) -> None:
        """Give back claims of creates that were never sent (see `store.outbox.release_claims`)."""
        if rows:
            with self.store.transaction() as conn:
                outbox_rows.release_claims(conn, rows)

    def _record_delivered(self, delivered: list[tuple[Any, str]]) -> None:
        """Record the creates that went through, in one commit (executemany)."""
        if not delivered:
            return
        done, delivered[:] = list(delivered), []
        now = self.clock()
        with self.store.transaction() as conn:
            outbox_rows.mark_delivered(conn, done, now)

    def _due(
        self,
        limit: int,
        exclude: set[str],
        account_id: int | None = None,
        due_by: datetime | None = None,
    ) -> list[Any]:
        now = max(self.clock(), due_by) if due_by is not None else self.clock()
        with self.store.engine.connect() as conn:
            return outbox_rows.due_activities(
                conn, limit, now, exclude=exclude, account_id=account_id
            )

    def _deliver_one(self, row: Any, result: Delivery) -> None:
        draft = draft_from_json(row["desired"])
        crm_id = row["crm_id"]
        if crm_id is None and row["attempt_started_at"] is not None:
            # An earlier create may have reached the CRM: find it before creating it again.
            primary = draft.person_ids[0] if draft.person_ids else None
            crm_id = self.crm.find_activity(draft.key, primary)
            if crm_id is not None:
                result.found_again += 1
                with self.store.transaction() as conn:
                    outbox_rows.record_found(conn, row["key"], crm_id)
        if crm_id is None:
            with self.store.transaction() as conn:
                claimed = outbox_rows.claim_creates(conn, [row], self.clock())
            if not claimed:
                return  # another process is delivering this row: leave it to it
            crm_id = self.crm.create_activity(draft)
            result.created += 1
        else:
            self.crm.update_activity(crm_id, draft)
            result.updated += 1
        with self.store.transaction() as conn:
            outbox_rows.mark_delivered(conn, [(row, crm_id)], self.clock())

    def _refused(
        self,
        row: Any,
        exc: CRMRefused,
        result: Delivery,
        why: str = "",
        *,
        activity_gone: bool = False,
    ) -> None:
        """Refused for good: kept with the CRM's answer, not retried until `outbox retry`."""
        result.refused += 1
        result.errors.append(f"{row['key']}: {exc}{why}")
        with self.store.transaction() as conn:
            outbox_rows.mark_failed(
                conn,
                row["key"],
                row["attempts"] + 1,
                f"{exc}{why}",
                self.clock(),
                activity_gone=activity_gone,
            )

    def _gone(self, row: Any, exc: CRMRecordGone, result: Delivery) -> bool:
        """The write names a person or item the CRM no longer has: expire what the caches say
        about the thread's persons, and decide the thread again. True when it was decided again
        now (its new write is due); a second such refusal of the same version fails for good."""
        with self.store.engine.connect() as conn:
            now = outbox_rows.versions(conn, row["key"])
        if now is not None and now.desired_version != row["desired_version"]:
            return True  # decided again meanwhile (another email's refusal): the new write is due
        if row["redecided_version"] == row["desired_version"] or (
            now is not None and now.redecided_version == row["desired_version"]
        ):
            self._refused(row, exc, result, " (again after deciding the thread again)")
            return False
        result.redecided += 1
        draft = draft_from_json(row["desired"])
        gone = exc.record_id or ""
        gone_person = [int(gone)] if exc.kind == "person" and gone.isdigit() else []
        with self.store.transaction() as conn:
            owner = outbox_rows.to_decide_again(
                conn, row, [*draft.person_ids, *gone_person], str(exc)
            )
        self.crm.forget_cached()
        if self.redecide is None or owner is None:
            return False
        try:
            self.redecide([owner])
        except CRMAuthError:
            raise
        except CRMError as again:
            result.errors.append(f"{row['key']}: deciding again postponed: {again}")
            return False
        return True

    def _failed(self, row: Any, error: str, result: Delivery) -> None:
        result.failed += 1
        result.errors.append(f"{row['key']}: {error}")
        with self.store.transaction() as conn:
            outbox_rows.retry_later(
                conn,
                row["key"],
                row["attempts"] + 1,
                error,
                self.clock() + _backoff(row["attempts"]),
            )
