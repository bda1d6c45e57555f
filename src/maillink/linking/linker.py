"""The linker: gathers CRM facts (through the caches), replays threads through the rules, and
records each decision, its reason and the activity to write (the outbox) in one transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from maillink.crm.base import CRM
from maillink.linking.activity_claims import claim_activities
from maillink.linking.facts import Decision, Facts, LinkingPolicy, ThreadInput
from maillink.linking.new_persons import PersonCreator, unknown_addresses
from maillink.linking.rules import decide_thread, external_participants
from maillink.model import Item, ItemRef, Message, Person
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

    def gather(self, emails: Iterable[str], *, remember: bool = True) -> Facts:
        """The facts about these addresses; `remember=False` leaves the caches as they are."""
        wanted = {e.lower() for e in emails}
        now = self.clock()
        with self.store.transaction() as conn:
            persons = cache.fresh_persons(conn, wanted, now, self.ttl.persons)
        fetched_persons: dict[str, list[Person]] = {}
        for email in sorted(wanted - persons.keys()):
            fetched_persons[email] = self.crm.search_persons(email)
        persons.update(fetched_persons)
        person_ids = {p.id for found in persons.values() for p in found}
        with self.store.transaction() as conn:
            if remember:
                cache.put_persons(conn, fetched_persons, now)
            items = cache.fresh_items(conn, person_ids, now, self.ttl.items)
        fetched_items: dict[int, list[Item]] = {}
        for person_id in sorted(person_ids - items.keys()):
            fetched_items[person_id] = self.crm.items_of_person(person_id)
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
            items[person_id] = items.get(person_id, []) + extra
            added[person_id] = items[person_id]
        if added and remember:
            with self.store.transaction() as conn:
                cache.put_items(conn, added, self.clock())
        return Facts(persons_by_email=facts.persons_by_email, items_by_person=items)


def _message_keys(
    account: Account,
    rows_by_thread: Mapping[int, Sequence[Any]],
    threads: Mapping[int, mail.StoredThread],
) -> list[str]:
    return [
        mail.message_from_row(account.email, threads[tid].key, row).key
        for tid, rows in rows_by_thread.items()
        if tid in threads
        for row in rows
    ]


def _delivered_links(conn: Connection, keys: Iterable[str]) -> dict[str, frozenset[ItemRef]]:
    """The items each of these emails' activities already carries in the CRM: those created
    there whose latest version was delivered (a pending version's items are not the CRM's yet).
    """
    wanted = sorted(set(keys))
    found: dict[str, frozenset[ItemRef]] = {}
    for start in range(0, len(wanted), 500):
        for key, desired in conn.execute(
            select(activities.c.key, activities.c.desired).where(
                activities.c.key.in_(wanted[start : start + 500]),
                activities.c.crm_id.is_not(None),
                activities.c.delivered_version >= activities.c.desired_version,
            )
        ):
            found[key] = frozenset(ItemRef.parse(ref) for ref in desired.get("items", ()))
    return found


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
            delivered = _delivered_links(read, _message_keys(account, rows, threads))
        facts = self.facts.gather(self._addresses(account, rows, threads), remember=conn is None)
        if self.policy.create_persons and conn is None:  # never in a dry run
            facts = self._with_new_persons(account, rows, threads, facts)
        unseen = self._persons_with_unseen_items(account, rows, threads, facts)
        if unseen:
            facts = self.facts.with_archived(facts, unseen, remember=conn is None)
        facts = replace(facts, delivered=delivered)
        if conn is not None:
            return self._record(conn, account, ids, facts, cause)
        with self.store.transaction() as write:
            return self._record(write, account, ids, facts, cause)

    def redecide(self, thread_ids: Iterable[int], *, cause: str = "crm_refusal") -> Counter[str]:
        """Decide these threads (of any mailboxes) again: the outbox calls it when the CRM
        refused a write because a person or item it names is gone (the caches were expired)."""
        from maillink.store.accounts import get_by_id

        with self.store.engine.connect() as read:
            found = mail.threads_by_id(read, sorted(set(thread_ids)))
            owners = {tid: get_by_id(read, t.account_id) for tid, t in found.items()}
        counted: Counter[str] = Counter()
        for account_id in sorted({t.account_id for t in found.values()}):
            ids = [tid for tid, t in found.items() if t.account_id == account_id]
            account = owners[ids[0]]
            if account is not None:
                counted.update(self.decide(account, ids, cause=cause))
        return counted

    def _with_new_persons(
        self,
        account: Account,
        rows_by_thread: Mapping[int, Sequence[Any]],
        threads: Mapping[int, mail.StoredThread],
        facts: Facts,
    ) -> Facts:
        """`facts` plus the CRM persons created for the threads' unknown external addresses."""
        messages = (
            mail.message_from_row(account.email, threads[tid].key, row)
            for tid, rows in rows_by_thread.items()
            for row in rows
        )
        wanted = unknown_addresses(messages, self.policy, facts)
        creator = PersonCreator(self.store, self.facts.crm, clock=self.facts.clock)
        return creator.add_to(facts, wanted)

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
        claimed = claim_activities(conn, replayed, now)
        changed: list[dict[str, Any]] = []
        for (row, _message, _wanted), decision in zip(replayed, claimed, strict=True):
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
