"""The linker: gathers CRM facts (through the caches), replays threads through the rules, and
records each decision, its reason and the activity to write (the outbox) in one transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from maillink.crm.activity import draft_for, draft_to_json
from maillink.crm.base import CRM
from maillink.linking.facts import Decision, Facts, Item, LinkingPolicy, Person, Reason, ThreadInput
from maillink.linking.rules import decide_thread, external_participants
from maillink.model import Message
from maillink.store import Store, cache, mail
from maillink.store.accounts import Account
from maillink.store.schema import activities, decision_log, messages


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CacheTTL:
    persons: timedelta = timedelta(hours=1)
    items: timedelta = timedelta(minutes=10)


class FactGatherer:
    """Persons by email and items by person, from the store's caches or else from the CRM."""

    def __init__(self, store: Store, crm: CRM, ttl: CacheTTL, clock: Callable[[], datetime] = _now):
        self.store = store
        self.crm = crm
        self.ttl = ttl
        self.clock = clock
        self.crm_reads = 0

    def gather(self, emails: Iterable[str], *, remember: bool = True) -> Facts:
        """The facts about these addresses; `remember=False` leaves the caches as they are."""
        wanted = {e.lower() for e in emails}
        now = self.clock()
        with self.store.transaction() as conn:
            persons = cache.fresh_persons(conn, wanted, now, self.ttl.persons)
        fetched_persons: dict[str, list[Person]] = {}
        for email in sorted(wanted - persons.keys()):
            fetched_persons[email] = self.crm.search_persons(email)
            self.crm_reads += 1
        persons.update(fetched_persons)
        person_ids = {p.id for found in persons.values() for p in found}
        with self.store.transaction() as conn:
            if remember:
                cache.put_persons(conn, fetched_persons, now)
            items = cache.fresh_items(conn, person_ids, now, self.ttl.items)
        fetched_items: dict[int, list[Item]] = {}
        for person_id in sorted(person_ids - items.keys()):
            fetched_items[person_id] = self.crm.items_of_person(person_id)
            self.crm_reads += 1
        items.update(fetched_items)
        if fetched_items and remember:
            with self.store.transaction() as conn:
                cache.put_items(conn, fetched_items, now)
        return Facts(persons_by_email=persons, items_by_person=items)

    def with_archived(
        self, facts: Facts, person_ids: Iterable[int], *, remember: bool = True
    ) -> Facts:
        """`facts` plus the archived items of these persons (and the caches learn them)."""
        items = {pid: list(found) for pid, found in facts.items_by_person.items()}
        added: dict[int, list[Item]] = {}
        for person_id in sorted(set(person_ids)):
            known = {str(i.ref) for i in items.get(person_id, [])}
            extra = [
                i for i in self.crm.archived_items_of_person(person_id) if str(i.ref) not in known
            ]
            self.crm_reads += 1
            items[person_id] = items.get(person_id, []) + extra
            added[person_id] = items[person_id]
        if added and remember:
            with self.store.transaction() as conn:
                cache.put_items(conn, added, self.clock())
        return Facts(persons_by_email=facts.persons_by_email, items_by_person=items)


def _stored_decision(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        row["reason"],
        list(row["person_ids"]),
        list(row["items"]),
        list(row["candidates"]),
        row["detail"],
    )


def _decision_values(d: Decision) -> tuple[Any, ...]:
    return (
        d.reason.value,
        list(d.person_ids),
        [str(i) for i in d.items],
        [str(c) for c in d.candidates],
        d.detail,
    )


class Linker:
    """Decides the threads a page touched and records the outcome (decisions + outbox)."""

    def __init__(self, store: Store, facts: FactGatherer, policy: LinkingPolicy):
        self.store = store
        self.facts = facts
        self.policy = policy

    # -- facts ---------------------------------------------------------------------------------
    def _addresses(
        self,
        account: Account,
        rows_by_thread: Mapping[int, Sequence[Any]],
        threads: Mapping[int, mail.StoredThread],
    ) -> set[str]:
        emails: set[str] = set()
        for tid, rows in rows_by_thread.items():
            for row in rows:
                message = mail.message_from_row(account.email, threads[tid].key, row)
                external, _blocked = external_participants(message, self.policy)
                emails.update(a.email for a in external)
        return emails

    def decide(
        self,
        account: Account,
        thread_ids: Iterable[int],
        *,
        cause: str = "sync",
        conn: Connection | None = None,
    ) -> Counter[str]:
        """Replay the threads through the rules and record what changed. Returns reasons counted.

        Facts are gathered first (CRM calls happen outside any write transaction), then the
        decisions and the outbox rows are written in one transaction (or in `conn`, when given:
        a dry run passes a connection that is rolled back).
        """
        ids = sorted(set(thread_ids))
        if not ids:
            return Counter()
        reader = nullcontext(conn) if conn is not None else self.store.engine.connect()
        with reader as read:
            threads = mail.threads_by_id(read, ids)
            rows = mail.messages_of_threads(read, ids)
        facts = self.facts.gather(self._addresses(account, rows, threads), remember=conn is None)
        unseen = self._persons_with_unseen_items(account, rows, threads, facts)
        if unseen:
            facts = self.facts.with_archived(facts, unseen, remember=conn is None)
        if conn is not None:
            return self._record(conn, account, ids, facts, cause)
        with self.store.transaction() as write:
            return self._record(write, account, ids, facts, cause)

    def _persons_with_unseen_items(
        self,
        account: Account,
        rows_by_thread: Mapping[int, Sequence[Any]],
        threads: Mapping[int, mail.StoredThread],
        facts: Facts,
    ) -> set[int]:
        """Persons of threads whose stored links name an item the CRM's open lists lack.

        Such an item was archived since (or deleted): its archived record is read so that the
        messages exchanged while it was open keep their link.
        """
        seen = {str(i.ref) for found in facts.items_by_person.values() for i in found}
        persons: set[int] = set()
        for tid, rows in rows_by_thread.items():
            thread = threads[tid]
            named = {str(r) for r in (thread.link, thread.choice) if r is not None}
            named.update(ref for row in rows for ref in row["items"])
            if not named - seen:
                continue
            for row in rows:
                message = mail.message_from_row(account.email, thread.key, row)
                for address in external_participants(message, self.policy)[0]:
                    persons.update(p.id for p in facts.persons_by_email.get(address.email, ()))
        return persons

    # -- recording -----------------------------------------------------------------------------
    def _record(
        self, conn: Connection, account: Account, ids: Sequence[int], facts: Facts, cause: str
    ) -> Counter[str]:
        """Replay each thread, then write what changed in a few statements (executemany)."""
        counted: Counter[str] = Counter()
        threads = mail.threads_by_id(conn, ids)
        rows_by_thread = mail.messages_of_threads(conn, ids)
        now = datetime.now(UTC)
        replayed: list[tuple[Any, Message, Decision]] = []
        outcomes: list[dict[str, Any]] = []
        for tid in ids:
            thread = threads.get(tid)
            rows = rows_by_thread.get(tid, [])
            if thread is None or not rows:
                continue
            msgs = [mail.message_from_row(account.email, thread.key, row) for row in rows]
            created_at = thread.first_message_at or min(
                (m.date for m in msgs if m.date is not None), default=now
            )
            outcome = decide_thread(
                ThreadInput(
                    key=thread.key,
                    created_at=created_at,
                    messages=msgs,
                    choice=thread.choice,
                    unlinked=thread.unlinked,
                ),
                facts,
                self.policy,
            )
            outcomes.append(mail.thread_outcome_values(tid, outcome))
            by_provider_id = {row["provider_id"]: row for row in rows}
            by_id = {m.provider_id: m for m in msgs}
            for decision in outcome.decisions:
                pid = decision.provider_id
                replayed.append((by_provider_id[pid], by_id[pid], decision))
        mail.save_thread_outcomes(conn, outcomes)
        claims = _ActivityClaims(conn, [m.key for _, m, d in replayed if d.reason.writes_activity])
        changed: list[dict[str, Any]] = []
        for row, message, decision in replayed:
            decision = claims.claim(row, message, decision, now)
            counted[decision.reason.value] += 1
            values = _decision_values(decision)
            if row["reason"] is not None and _stored_decision(row) == values:
                continue
            reason, person_ids, items, candidates, detail = values
            changed.append(
                {
                    "b_id": row["id"],
                    "b_reason": reason,
                    "b_person_ids": person_ids,
                    "b_items": items,
                    "b_candidates": candidates,
                    "b_detail": detail,
                }
            )
        claims.write()
        if changed:
            conn.execute(
                update(messages)
                .where(messages.c.id == bindparam("b_id"))
                .values(
                    reason=bindparam("b_reason"),
                    person_ids=bindparam("b_person_ids"),
                    items=bindparam("b_items"),
                    candidates=bindparam("b_candidates"),
                    detail=bindparam("b_detail"),
                    decided_at=now,
                ),
                changed,
            )
            conn.execute(
                insert(decision_log),
                [
                    {
                        "message_id": c["b_id"],
                        "reason": c["b_reason"],
                        "items": c["b_items"],
                        "person_ids": c["b_person_ids"],
                        "detail": c["b_detail"],
                        "cause": cause,
                        "decided_at": now,
                    }
                    for c in changed
                ],
            )
        return counted


class _ActivityClaims:
    """The outbox rows of one recording: read at once, changed in memory, written at once.

    One activity per email, team-wide: the first mailbox that stored an email owns its
    activity; the same email in another connected mailbox is recorded as a duplicate and writes
    nothing.
    """

    def __init__(self, conn: Connection, keys: Sequence[str]) -> None:
        self.conn = conn
        self.existing: dict[str, tuple[int | None, Any, int]] = {}
        wanted = sorted(set(keys))
        for start in range(0, len(wanted), 500):
            for key, owner, desired, version in conn.execute(
                select(
                    activities.c.key,
                    activities.c.owner_message_id,
                    activities.c.desired,
                    activities.c.desired_version,
                ).where(activities.c.key.in_(wanted[start : start + 500]))
            ):
                self.existing[key] = (owner, desired, version)
        self.inserts: dict[str, dict[str, Any]] = {}
        self.updates: dict[str, dict[str, Any]] = {}

    def claim(
        self, row: Mapping[str, Any], message: Message, decision: Decision, now: datetime
    ) -> Decision:
        """Put the activity this decision wants in the outbox (or say whose it is)."""
        if not decision.reason.writes_activity:
            return decision
        key = message.key
        desired = draft_to_json(draft_for(message, decision))
        existing = self.existing.get(key)
        if existing is None:
            self.inserts[key] = {
                "key": key,
                "owner_message_id": row["id"],
                "desired": desired,
                "desired_version": 1,
                "delivered_version": 0,
                "attempts": 0,
                "updated_at": now,
            }
            self.existing[key] = (row["id"], desired, 1)
            return decision
        owner, stored, version = existing
        if owner not in (None, row["id"]):
            found = self.conn.execute(
                select(messages.c.account_id, messages.c.provider_id).where(messages.c.id == owner)
            ).first()
            where = (
                f"message {found.provider_id} of account {found.account_id}"
                if found
                else "another mailbox"
            )
            return Decision(
                provider_id=decision.provider_id,
                reason=Reason.DUPLICATE_MESSAGE,
                person_ids=decision.person_ids,
                detail=f"the same email ({key}) was stored first as {where}, "
                f"whose decision writes its one activity",
            )
        if stored != desired:
            if key in self.inserts:  # created by this recording: still its first version
                self.inserts[key].update(owner_message_id=row["id"], desired=desired)
                self.existing[key] = (row["id"], desired, version)
                return decision
            self.updates[key] = {
                "b_key": key,
                "b_owner": row["id"],
                "b_desired": desired,
                "b_version": version + 1,
                "b_updated_at": now,
            }
            self.existing[key] = (row["id"], desired, version + 1)
        return decision

    def write(self) -> None:
        if self.inserts:
            self.conn.execute(insert(activities), list(self.inserts.values()))
        if self.updates:
            self.conn.execute(
                update(activities)
                .where(activities.c.key == bindparam("b_key"))
                .values(
                    owner_message_id=bindparam("b_owner"),
                    desired=bindparam("b_desired"),
                    desired_version=bindparam("b_version"),
                    next_attempt_at=None,
                    updated_at=bindparam("b_updated_at"),
                ),
                list(self.updates.values()),
            )
