"""The linker: gathers CRM facts (through the caches), replays threads through the rules, and asks
the store to record each decision, its reason and the activity to write (the outbox) in one
transaction. It builds no statement: `store.decisions` and `store.activity_claims` hold them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from maillink.crm.activity import draft_for, draft_to_json
from maillink.crm.base import CRM, BatchLookup
from maillink.crm.owners import Mailbox, Owners
from maillink.linking.explanations import Why
from maillink.linking.facts import Decision, Facts, LinkingPolicy, Reason, ThreadInput
from maillink.linking.new_persons import PersonCreator, unknown_addresses
from maillink.linking.rules import decide_thread, external_participants
from maillink.model import Item, Person
from maillink.store import Store, cache, mail
from maillink.store.accounts import Account, all_accounts
from maillink.store.activity_claims import (
    ActivityClaim,
    OwnedElsewhere,
    claim_activities,
    delivered_links,
)
from maillink.store.decisions import (
    StoredDecision,
    StoredMessage,
    messages_to_decide,
    record_decisions,
)

# The stored messages of the threads being decided, by thread id.
Stored = Mapping[int, Sequence[StoredMessage]]


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
        fetched_persons = self._search_persons(sorted(wanted - persons.keys()))
        persons.update(fetched_persons)
        person_ids = {p.id for found in persons.values() for p in found}
        with self.store.transaction() as conn:
            if remember:
                cache.put_persons(conn, fetched_persons, now)
            items = cache.fresh_items(conn, person_ids, now, self.ttl.items)
        fetched_items = self._items_of_persons(sorted(person_ids - items.keys()))
        items.update(fetched_items)
        if fetched_items and remember:
            with self.store.transaction() as conn:
                cache.put_items(conn, fetched_items, now)
        return Facts(persons_by_email=persons, items_by_person=items)

    def _search_persons(self, emails: list[str]) -> dict[str, list[Person]]:
        """The persons of these addresses: in one batch when the CRM offers it (`BatchLookup`),
        else one search per address."""
        if emails and isinstance(self.crm, BatchLookup):
            found = self.crm.search_persons_many(emails)
            return {e: list(found.get(e, ())) for e in emails}
        return {email: self.crm.search_persons(email) for email in emails}

    def _items_of_persons(self, person_ids: list[int]) -> dict[int, list[Item]]:
        """The items of these persons: in one batch when the CRM offers it, else one by one."""
        if person_ids and isinstance(self.crm, BatchLookup):
            found = self.crm.items_of_persons(person_ids)
            return {pid: list(found.get(pid, ())) for pid in person_ids}
        return {pid: self.crm.items_of_person(pid) for pid in person_ids}

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


def _stored(d: Decision) -> StoredDecision:
    return StoredDecision(
        reason=d.reason.value,
        person_ids=tuple(d.person_ids),
        items=tuple(str(i) for i in d.items),
        candidates=tuple(str(c) for c in d.candidates),
        detail=d.detail,
    )


def _organizations(facts: Facts) -> dict[int, str]:
    """The organization (company) of each person the facts know, when the CRM gave one."""
    return {
        p.id: p.organization_id
        for found in facts.persons_by_email.values()
        for p in found
        if p.organization_id is not None
    }


def _claim(
    stored: StoredMessage,
    decision: Decision,
    owners: Owners | None = None,
    organizations: Mapping[int, str] | None = None,
) -> ActivityClaim:
    """The activity this decision wants for its email (None when it writes none): owned by
    its rep's CRM user, linked to its primary person's organization."""
    desired = None
    if decision.reason.writes_activity:
        primary = decision.person_ids[0] if decision.person_ids else None
        draft = draft_for(
            stored.message,
            decision.person_ids,
            decision.items,
            owner_id=owners.owner_id(stored.message) if owners is not None else None,
            organization_id=(organizations or {}).get(primary) if primary is not None else None,
        )
        desired = draft_to_json(draft)
    return ActivityClaim(stored.id, stored.message.key, desired)


def _duplicate(decision: Decision, owner: OwnedElsewhere) -> Decision:
    """The decision of a copy of an email whose activity another stored copy writes."""
    return Decision(
        provider_id=decision.provider_id,
        reason=Reason.DUPLICATE_MESSAGE,
        person_ids=decision.person_ids,
        why=Why(key=owner.key, first=owner.describe()),
    )


def connected_mailboxes(conn: Connection) -> tuple[Mailbox, ...]:
    """Every connected mailbox, with its aliases and the CRM user set by hand (if any)."""
    return tuple(Mailbox(a.email, a.aliases, a.crm_user_id) for a in all_accounts(conn))


class Linker:
    """Decides the threads a page touched and records the outcome (decisions + outbox)."""

    def __init__(
        self,
        store: Store,
        facts: FactGatherer,
        policy: LinkingPolicy,
        mailboxes: Callable[[], Sequence[Mailbox]] | None = None,
    ):
        """`mailboxes`: the connected mailboxes (whose reps own the emails), as the caller keeps
        them; None: read from the store at each decision."""
        self.store = store
        self.facts = facts
        self.policy = policy
        self.mailboxes = mailboxes

    # -- facts ---------------------------------------------------------------------------------
    def _addresses(self, stored: Stored) -> set[str]:
        emails: set[str] = set()
        for found in stored.values():
            for m in found:
                external, _blocked = external_participants(m.message, self.policy)
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
            stored = messages_to_decide(read, account.email, threads)
            keys = [m.message.key for found in stored.values() for m in found]
            delivered = delivered_links(read, keys)
            mailboxes = self.mailboxes() if self.mailboxes else connected_mailboxes(read)
        facts = self.facts.gather(self._addresses(stored), remember=conn is None)
        if self.policy.create_persons and conn is None:  # never in a dry run
            facts = self._with_new_persons(stored, facts)
        unseen = self._persons_with_unseen_items(stored, threads, facts)
        if unseen:
            facts = self.facts.with_archived(facts, unseen, remember=conn is None)
        facts = replace(facts, delivered=delivered)
        built = {m.id: m for found in stored.values() for m in found}
        owners = Owners(self.facts.crm, mailboxes).resolve()  # its CRM read, before writing
        if conn is not None:
            return self._record(conn, account, ids, facts, cause, built, owners)
        with self.store.transaction() as write:
            return self._record(write, account, ids, facts, cause, built, owners)

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

    def _with_new_persons(self, stored: Stored, facts: Facts) -> Facts:
        """`facts` plus the CRM persons created for the threads' unknown external addresses."""
        messages = (m.message for found in stored.values() for m in found)
        wanted = unknown_addresses(messages, self.policy, facts)
        creator = PersonCreator(self.store, self.facts.crm, clock=self.facts.clock)
        return creator.add_to(facts, wanted)

    def _persons_with_unseen_items(
        self, stored: Stored, threads: Mapping[int, mail.StoredThread], facts: Facts
    ) -> set[int]:
        """Persons of threads whose stored links name an item the CRM's open lists lack.

        Such an item was archived since (or deleted): its archived record is read so that the
        messages exchanged while it was open keep their link.
        """
        seen = {str(i.ref) for found in facts.items_by_person.values() for i in found}
        persons: set[int] = set()
        for tid, found in stored.items():
            thread = threads[tid]
            named = {str(r) for r in (thread.link, thread.choice) if r is not None}
            named.update(ref for m in found for ref in m.decision.items)
            if not named - seen:
                continue
            for m in found:
                for address in external_participants(m.message, self.policy)[0]:
                    persons.update(p.id for p in facts.persons_by_email.get(address.email, ()))
        return persons

    # -- recording -----------------------------------------------------------------------------
    def _record(
        self,
        conn: Connection,
        account: Account,
        ids: Sequence[int],
        facts: Facts,
        cause: str,
        built: Mapping[int, StoredMessage],
        owners: Owners | None = None,
    ) -> Counter[str]:
        """Replay each thread (its messages read again in this transaction, reusing those built
        before), then ask the store to record what changed."""
        counted: Counter[str] = Counter()
        threads = mail.threads_by_id(conn, ids)
        stored = messages_to_decide(conn, account.email, threads, built)
        now = datetime.now(UTC)
        replayed: list[tuple[StoredMessage, Decision]] = []
        outcomes: list[dict[str, Any]] = []
        for tid in ids:
            thread = threads.get(tid)
            found = stored.get(tid, [])
            if thread is None or not found:
                continue
            msgs = [m.message for m in found]
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
            by_provider_id = {m.message.provider_id: m for m in found}
            for decision in outcome.decisions:
                replayed.append((by_provider_id[decision.provider_id], decision))
        mail.save_thread_outcomes(conn, outcomes)
        organizations = _organizations(facts)
        claims = [_claim(m, d, owners, organizations) for m, d in replayed]
        owners_elsewhere = claim_activities(conn, claims, now)
        changed: list[tuple[int, StoredDecision]] = []
        for (m, decision), owner in zip(replayed, owners_elsewhere, strict=True):
            if owner is not None:
                decision = _duplicate(decision, owner)
            counted[decision.reason.value] += 1
            wanted = _stored(decision)
            if m.decision.reason is not None and m.decision == wanted:
                continue
            changed.append((m.id, wanted))
        record_decisions(conn, changed, cause, now)
        return counted
