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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from maillink.crm.activity import draft_from_json
from maillink.crm.base import CRM, CRMAuthError, CRMError, CRMRateLimited, CRMUnavailable
from maillink.store import Store, cache
from maillink.store.schema import activities, messages

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
    failed: int = 0
    parked_until: datetime | None = None
    errors: list[str] = field(default_factory=list)


def pending_count(conn: Connection) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(activities)
            .where(activities.c.delivered_version < activities.c.desired_version)
        ).scalar_one()
    )


class Outbox:
    def __init__(
        self, store: Store, crm: CRM, clock: Callable[[], datetime] = _now, workers: int = 4
    ):
        self.store = store
        self.crm = crm
        self.clock = clock
        self.workers = workers  # CRM writes in flight at once

    def parked_until(self) -> datetime | None:
        with self.store.transaction() as conn:
            value = cache.get_state(conn, PARKED_UNTIL)
        if value is None:
            return None
        until = datetime.fromisoformat(value)
        return until if until > self.clock() else None

    def deliver(self, *, batch: int = 200, account_id: int | None = None) -> Delivery:
        """Deliver what is due, oldest first, until nothing is due or the CRM says stop.

        With `account_id`, only the rows whose email was stored first from that mailbox.
        """
        result = Delivery()
        parked = self.parked_until()
        if parked is not None:
            result.parked_until = parked
            return result
        done: set[str] = set()
        while True:
            rows = self._due(batch, exclude=done, account_id=account_id)
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
                except (CRMUnavailable, CRMError) as exc:
                    self._failed(row, str(exc), result)

    def _deliver_window(
        self, rows: list[Any], result: Delivery
    ) -> Iterator[tuple[Any, Exception | None]]:
        """Deliver `rows`, `workers` at a time (CRM round trips overlap); yields each row and
        its error, window by window, so that the caller can stop after the window in hand."""
        workers = max(1, self.workers)

        def one(row: Any) -> tuple[Delivery, Exception | None]:
            part = Delivery()
            try:
                self._deliver_one(row, part)
            except CRMAuthError:
                raise
            except CRMError as exc:
                return part, exc
            return part, None

        with ThreadPoolExecutor(workers, thread_name_prefix="maillink-outbox") as pool:
            for start in range(0, len(rows), workers):
                window = rows[start : start + workers]
                answers = list(pool.map(one, window)) if workers > 1 else [one(window[0])]
                for part, _ in answers:
                    result.created += part.created
                    result.updated += part.updated
                    result.found_again += part.found_again
                for row, (_, error) in zip(window, answers, strict=True):
                    yield row, error

    def _due(self, limit: int, exclude: set[str], account_id: int | None = None) -> list[Any]:
        now = self.clock()
        query = (
            select(activities)
            .where(
                activities.c.delivered_version < activities.c.desired_version,
                or_(activities.c.next_attempt_at.is_(None), activities.c.next_attempt_at <= now),
            )
            .order_by(activities.c.updated_at, activities.c.key)
            .limit(limit + len(exclude))
        )
        if account_id is not None:
            query = query.join(messages, messages.c.id == activities.c.owner_message_id).where(
                messages.c.account_id == account_id
            )
        with self.store.engine.connect() as conn:
            rows = conn.execute(query)
            return [row._mapping for row in rows if row.key not in exclude][:limit]

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
                    conn.execute(
                        update(activities)
                        .where(activities.c.key == row["key"])
                        .values(crm_id=crm_id)
                    )
        if crm_id is None:
            with self.store.transaction() as conn:
                claimed = conn.execute(
                    update(activities)
                    .where(
                        activities.c.key == row["key"],
                        activities.c.attempts == row["attempts"],
                        activities.c.crm_id.is_(None),
                    )
                    .values(attempt_started_at=self.clock(), attempts=row["attempts"] + 1)
                ).rowcount
            if claimed != 1:
                return  # another process is delivering this row: leave it to it
            crm_id = self.crm.create_activity(draft)
            result.created += 1
        else:
            self.crm.update_activity(crm_id, draft)
            result.updated += 1
        with self.store.transaction() as conn:
            conn.execute(
                update(activities)
                .where(activities.c.key == row["key"])
                .values(
                    crm_id=crm_id,
                    delivered_version=row["desired_version"],
                    last_error=None,
                    next_attempt_at=None,
                    updated_at=self.clock(),
                )
            )

    def _failed(self, row: Any, error: str, result: Delivery) -> None:
        result.failed += 1
        result.errors.append(f"{row['key']}: {error}")
        with self.store.transaction() as conn:
            conn.execute(
                update(activities)
                .where(activities.c.key == row["key"])
                .values(
                    attempts=row["attempts"] + 1,
                    last_error=error[:2000],
                    next_attempt_at=self.clock() + _backoff(row["attempts"]),
                )
            )
