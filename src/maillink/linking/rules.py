"""The linking rules (docs/linking-rules.md) as a pure function: a thread and the CRM facts in,
one decision per message and the thread's link out. No I/O, no clock, deterministic. A decision
is its reason, its persons, items and candidates, and the facts its explanation names (`Why`);
the sentence itself comes from the table of linking/explanations.py.

`decide_thread` replays the thread: its messages sorted by (date, provider_id), each decided by
the rules in turn with the thread's link carried forward. Replaying the whole thread on every
change is what makes the same mailbox synced in any order, in any page split, give the same
links. In the replay:

- a message without a date, or one for which rule 1 writes nothing (no external participant,
  all of them blocked, no known person), leaves the thread's state as it was;
- rule 5 holds from the thread's first message: with a user's choice, each message goes to the
  chosen item iff that item was open at the message's date; an unlinked thread gives persons
  only;
- rule 3: once rule 4 linked the thread, later messages go to its item while it is open, to
  their persons only after it closed (rule 6); the thread keeps the item either way;
- a deleted item is never a candidate (rule 2) and no new write names it: the CRM no longer has
  it. Rule 6 still holds for a thread linked to an item deleted later: an email whose activity
  the CRM already has linked to the item (`Facts.delivered`) and that was exchanged before the
  deletion (or the deletion date is unknown) counts the item as open, so it keeps its link and
  nothing is rewritten; the thread stays linked to the item through it, and rule 3 gives later
  messages their persons only. An item such an email carries that the CRM no longer lists
  among its persons' items (a deleted lead leaves no trace) is taken as deleted at an unknown
  date (`Item.gone`), so the link is kept too. Any other email (exchanged after the deletion,
  or whose activity the CRM does not have yet) never goes to the deleted item: with no
  delivered email before it, the thread is replayed without the item (its persons only, or the
  thread's other candidate if rule 4 now finds exactly one), and a user's choice of it links
  only the emails that already carry it;
- rule 4 otherwise, over the message's candidates (rule 2): one links the thread; several leave
  it waiting for the user's choice under policy "ask" (for good: later messages only add
  candidates), link the newest under "newest", or link the message to all of them and the
  thread to the newest (which later messages then follow) under "all"; none leaves the thread
  free for the next message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from functools import lru_cache

from maillink.linking.explanations import Why
from maillink.linking.facts import (
    Decision,
    Facts,
    LinkingPolicy,
    MultipleOpenItems,
    Reason,
    ThreadInput,
    ThreadOutcome,
)
from maillink.model import Address, Direction, Item, ItemRef, ItemStatus, Message, Person

AUTO = "auto"
USER = "user"


@lru_cache(maxsize=16)
def _lowered(policy: LinkingPolicy) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """The policy's own addresses, internal domains and blocked patterns, lower-cased: once per
    policy (it is immutable), not once per message, as a team may have thousands of addresses."""
    return (
        frozenset(address.lower() for address in policy.own_addresses),
        frozenset(domain.lower() for domain in policy.internal_domains),
        tuple(pattern.lower() for pattern in policy.blocked),
    )


def external_participants(
    message: Message, policy: LinkingPolicy
) -> tuple[list[Address], list[Address]]:
    """(external, blocked): From/To/Cc/Bcc minus own addresses (policy.own_addresses, the message's
    own account, and addresses in policy.internal_domains), deduplicated by email, in header order;
    the blocked ones (fnmatch, case-insensitive, against the whole address) are returned apart."""
    own, internal_domains, patterns = _lowered(policy)
    account = message.account.lower()
    external: list[Address] = []
    blocked: list[Address] = []
    seen: set[str] = set()
    for address in message.participants:
        email = address.email.strip().lower()
        if not email or email in seen:
            continue
        seen.add(email)
        if email in own or email == account or email.rpartition("@")[2] in internal_domains:
            continue
        if any(fnmatchcase(email, pattern) for pattern in patterns):
            blocked.append(address)
        else:
            external.append(address)
    return external, blocked


def decide_thread(thread: ThreadInput, facts: Facts, policy: LinkingPolicy) -> ThreadOutcome:
    """Replay `thread` under the rules and return each message's decision and the thread's link."""
    replay = _Replay(thread, facts, policy)
    decisions = tuple(
        replay.decide(message) for message in sorted(thread.messages, key=_replay_key)
    )
    return replay.outcome(decisions)


def _replay_key(message: Message) -> tuple[int, datetime | None, str]:
    # Undated messages go last, among themselves by provider id: they never change the state.
    if message.date is None:
        return (1, None, message.provider_id)
    return (0, message.date, message.provider_id)


class _Replay:
    """The thread's link state while its messages are decided in order."""

    def __init__(self, thread: ThreadInput, facts: Facts, policy: LinkingPolicy) -> None:
        self.thread = thread
        self.facts = facts
        self.policy = policy
        self.chosen = _find_item(facts, thread.choice) if thread.choice is not None else None
        self.auto: Item | None = None  # the item rule 4 linked the thread to
        self.waiting = False  # several candidates under policy "ask"
        self.gathered: dict[ItemRef, Item] = {}  # every candidate rule 4 gathered

    def decide(self, message: Message) -> Decision:
        """Rule 1 finds the message's persons; then the thread's item, when it has one (the
        user's, rule 5, or rule 4's: rule 3 follows it); otherwise rule 4 over the message's
        candidates (rule 2). Rule 6 is in `_open`."""
        pid, when = message.provider_id, message.date
        if when is None:
            return Decision(pid, Reason.NO_DATE)
        external, blocked = external_participants(message, self.policy)
        if not external:
            reason = Reason.BLOCKED if blocked else Reason.INTERNAL_ONLY
            return Decision(pid, reason, why=Why(addresses=_emails(blocked)))
        persons = self._persons(message, external)
        if not persons:
            return Decision(pid, Reason.NO_KNOWN_CONTACT, why=Why(addresses=_emails(external)))
        person_ids = tuple(person.id for person in persons)
        verdict = _Verdicts(pid, person_ids, when, self.thread.created_at, self.thread.choice)
        if self.thread.unlinked:
            return verdict.persons_only(Reason.UNLINKED_BY_USER)
        if self.thread.choice is not None:
            chosen = self._chosen(message, self.thread.choice)
            if chosen is None:
                return verdict.persons_only(Reason.ITEM_NOT_OPEN_AT_MESSAGE)
            return self._follow(verdict, message, when, chosen, Reason.USER_CHOICE)
        if self.auto is not None:
            return self._follow(verdict, message, when, self.auto, Reason.LINKED_THREAD_ITEM)
        return self._one_several_or_none(verdict, message, when, persons)

    def outcome(self, decisions: tuple[Decision, ...]) -> ThreadOutcome:
        if self.thread.unlinked:
            linked, source = None, None
        elif self.thread.choice is not None:
            linked, source = self.thread.choice, USER
        elif self.auto is not None:
            linked, source = self.auto.ref, AUTO
        else:
            linked, source = None, None
        return ThreadOutcome(
            linked=linked,
            link_source=source,
            waiting=self.waiting,
            candidates=tuple(sorted(self.gathered)),
            decisions=decisions,
        )

    # Rule 1: the persons.

    def _persons(self, message: Message, external: Sequence[Address]) -> list[Person]:
        """Every person of every external address, the primary first (the sender of an inbound
        email, the first recipient of an outbound one), deduplicated by id. Several persons with one
        address come by id, whatever order the CRM listed them in."""
        ordered = list(external)
        if message.direction is Direction.OUTBOUND:
            recipients = {
                address.email.lower() for address in message.to + message.cc + message.bcc
            }
            ordered.sort(key=lambda address: address.email.lower() not in recipients)  # stable
        persons: list[Person] = []
        seen: set[int] = set()
        for address in ordered:
            found = self.facts.persons_by_email.get(address.email.strip().lower(), ())
            for person in sorted(found, key=lambda p: p.id):
                if person.id not in seen:
                    seen.add(person.id)
                    persons.append(person)
        return persons

    # Rule 2: the candidates.

    def _candidates(self, items: Iterable[Item], message: Message, when: datetime) -> list[Item]:
        """Created before the thread and open at the message's date, sorted by ref."""
        return sorted(
            (
                item
                for item in items
                if item.created_at < self.thread.created_at and self._open(item, message, when)
            ),
            key=_ref,
        )

    def _exclusion(self, item: Item, when: datetime) -> Reason:
        """Why `item` is no candidate for a message of `when`."""
        if item.created_at >= self.thread.created_at:
            return Reason.ITEM_CREATED_AFTER_THREAD
        if when < item.created_at:  # only when a message predates its thread's creation
            return Reason.ITEM_NOT_OPEN_AT_MESSAGE
        return Reason.ITEM_CLOSED_BEFORE_MESSAGE

    # Rule 3: the thread's item.

    def _follow(
        self, verdict: _Verdicts, message: Message, when: datetime, item: Item, reason: Reason
    ) -> Decision:
        """The thread's item (the user's, or rule 4's), while it is open at the message's date;
        after it closed (rule 6), the persons only."""
        if self._open(item, message, when):
            return verdict.linked(reason, [item], about=item)
        if when < item.created_at:  # a chosen item only: rule 4's was open at an earlier message
            return verdict.persons_only(Reason.ITEM_NOT_OPEN_AT_MESSAGE, about=item)
        return verdict.persons_only(Reason.ITEM_CLOSED_BEFORE_MESSAGE, about=item)

    # Rule 4: one, several or no candidate.

    def _one_several_or_none(
        self, verdict: _Verdicts, message: Message, when: datetime, persons: list[Person]
    ) -> Decision:
        """The candidates of all the persons together: exactly one links the thread; several
        leave it waiting for the user's choice (or the policy takes the newest, or all); none
        leaves the message to its persons."""
        items = _items_of(persons, self.facts)
        items += self._gone_items(message, items)
        candidates = self._candidates(items, message, when)
        self.gathered.update((item.ref, item) for item in candidates)
        if self.waiting:
            gathered = [self.gathered[ref] for ref in sorted(self.gathered)]
            return verdict.persons_only(
                Reason.MULTIPLE_OPEN_ITEMS, candidates=gathered, waiting=True
            )
        if len(candidates) == 1:
            (self.auto,) = candidates
            return verdict.linked(
                Reason.SINGLE_OPEN_ITEM, candidates, about=self.auto, candidates=candidates
            )
        if not candidates:
            return self._none(verdict, when, items)
        if self.policy.multiple_open_items is MultipleOpenItems.ASK:
            self.waiting = True
            return verdict.persons_only(Reason.MULTIPLE_OPEN_ITEMS, candidates=candidates)
        self.auto = max(candidates, key=lambda item: (item.created_at, item.ref))
        if self.policy.multiple_open_items is MultipleOpenItems.NEWEST:
            return verdict.linked(
                Reason.NEWEST_OPEN_ITEM, [self.auto], about=self.auto, candidates=candidates
            )
        return verdict.linked(
            Reason.ALL_OPEN_ITEMS, candidates, about=self.auto, candidates=candidates
        )

    def _none(self, verdict: _Verdicts, when: datetime, items: list[Item]) -> Decision:
        """No candidate: the one reason rule 2 excluded every item of the persons for, if there
        is one (they may have no item at all). A deleted item is named among the excluded but
        decides no reason: the CRM no longer has it, and whether a CRM still lists deleted items
        (Pipedrive, 30 days) or not at all (HubSpot) must not change the decision."""
        excluded = tuple((item, self._exclusion(item, when)) for item in sorted(items, key=_ref))
        reasons = {r for item, r in excluded if item.status is not ItemStatus.DELETED}
        reason = reasons.pop() if len(reasons) == 1 else Reason.NO_OPEN_ITEMS
        return verdict.persons_only(reason, excluded=excluded)

    # Rule 5: the user's choice.

    def _chosen(self, message: Message, ref: ItemRef) -> Item | None:
        """The item the user chose, as the CRM lists it; one it no longer lists only for an
        email whose activity already carries it (None: unknown to the CRM)."""
        if self.chosen is None and self.facts.carries(message, ref):
            return Item.gone(ref)
        return self.chosen

    # Rule 6: closed and deleted items.

    def _open(self, item: Item, message: Message, when: datetime) -> bool:
        """Was `item` open at the message's date, for this message? A deleted item only if the
        CRM already has the message's activity linked to it (rule 6 keeps that link)."""
        delivered = item.status is ItemStatus.DELETED and self.facts.carries(message, item.ref)
        return item.open_at(when, delivered=delivered)

    def _gone_items(self, message: Message, items: Iterable[Item]) -> list[Item]:
        """The items this email's activity carries in the CRM that the CRM no longer lists
        among its persons' items (a deleted lead, a deal deleted long ago): deleted, date
        unknown, so the email keeps the link."""
        listed = {item.ref for item in items}
        carried = self.facts.delivered.get(message.key, frozenset())
        return [Item.gone(ref) for ref in sorted(carried) if ref not in listed]


@dataclass(frozen=True)
class _Verdicts:
    """The decisions open to a message once rule 1 found its persons, with the facts their
    explanation names (linking/explanations.py): the message's date, the thread's, the user's
    choice, and the item(s) each decision is about."""

    provider_id: str
    person_ids: tuple[int, ...]
    when: datetime
    started: datetime
    chosen: ItemRef | None

    def linked(
        self,
        reason: Reason,
        items: Sequence[Item],
        *,
        about: Item,
        candidates: Sequence[Item] = (),
    ) -> Decision:
        return self._decision(reason, items, about, candidates)

    def persons_only(
        self,
        reason: Reason,
        *,
        about: Item | None = None,
        candidates: Sequence[Item] = (),
        excluded: tuple[tuple[Item, Reason], ...] = (),
        waiting: bool = False,
    ) -> Decision:
        return self._decision(reason, (), about, candidates, excluded, waiting)

    def _decision(
        self,
        reason: Reason,
        items: Sequence[Item],
        about: Item | None,
        candidates: Sequence[Item],
        excluded: tuple[tuple[Item, Reason], ...] = (),
        waiting: bool = False,
    ) -> Decision:
        why = Why(
            when=self.when,
            started=self.started,
            item=about,
            candidates=tuple(candidates),
            excluded=excluded,
            chosen=self.chosen,
            waiting=waiting,
        )
        return Decision(
            self.provider_id,
            reason,
            self.person_ids,
            items=_refs(items),
            candidates=_refs(candidates),
            why=why,
        )


def _items_of(persons: Iterable[Person], facts: Facts) -> list[Item]:
    """Every item of the persons, open or not, deduplicated by ref."""
    items: dict[ItemRef, Item] = {}
    for person in persons:
        for item in facts.items_by_person.get(person.id, ()):
            items.setdefault(item.ref, item)
    return list(items.values())


def _find_item(facts: Facts, ref: ItemRef) -> Item | None:
    # Persons in id order, not the mapping's order, so that the answer is deterministic.
    for person_id in sorted(facts.items_by_person):
        for item in facts.items_by_person[person_id]:
            if item.ref == ref:
                return item
    return None


def _ref(item: Item) -> ItemRef:
    return item.ref


def _refs(items: Iterable[Item]) -> tuple[ItemRef, ...]:
    return tuple(item.ref for item in items)


def _emails(addresses: Iterable[Address]) -> tuple[str, ...]:
    return tuple(address.email for address in addresses)
