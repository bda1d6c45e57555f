"""The linking rules (docs/linking-rules.md) as a pure function: a thread and the CRM facts in, one decision
per message and the thread's link out. No I/O, no clock, deterministic.

`decide_thread` replays the thread: its messages sorted by (date, provider_id), each decided by the rules in
turn with the thread's link carried forward. Replaying the whole thread on every change is what makes
the same mailbox synced in any order, in any page split, give the same links. In the replay:

- a message without a date, or one for which rule 1 writes nothing (no external participant, all of
  them blocked, no known person), leaves the thread's state as it was;
- rule 5 holds from the thread's first message: with a user's choice, each message goes to the chosen
  item iff that item was open at the message's date; an unlinked thread gives persons only;
- rule 3: once rule 4 linked the thread, later messages go to its item while it is open, to their
  persons only after it closed (rule 6); the thread keeps the item either way;
- a deleted item is never a candidate (rule 2) and no new write names it: the CRM no longer has
  it. Rule 6 still holds for a thread linked to an item deleted later: an email whose activity
  the CRM already has linked to the item (`Facts.delivered`) and that was exchanged before the
  deletion (or the deletion date is unknown) counts the item as open, so it keeps its link and
  nothing is rewritten; the thread stays linked to the item through it, and rule 3 gives later
  messages their persons only. An item such an email carries that the CRM no longer lists
  among its persons' items (a deleted lead leaves no trace) is taken as deleted at an unknown
  date (`Item.gone`), so the link is kept too. Any other email (exchanged after the deletion, or whose activity
  the CRM does not have yet) never goes to the deleted item: with no delivered email before it,
  the thread is replayed without the item (its persons only, or the thread's other candidate if
  rule 4 now finds exactly one), and a user's choice of it links only the emails that already
  carry it;
- rule 4 otherwise, over the message's candidates (rule 2): one links the thread; several leave it
  waiting for the user's choice under policy "ask" (for good: later messages only add candidates),
  link the newest under "newest", or link the message to all of them and the thread to the newest
  (which later messages then follow) under "all"; none leaves the thread free for the next message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from fnmatch import fnmatchcase

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


def external_participants(
    message: Message, policy: LinkingPolicy
) -> tuple[list[Address], list[Address]]:
    """(external, blocked): From/To/Cc/Bcc minus own addresses (policy.own_addresses, the message's
    own account, and addresses in policy.internal_domains), deduplicated by email, in header order;
    the blocked ones (fnmatch, case-insensitive, against the whole address) are returned apart."""
    own = {address.lower() for address in policy.own_addresses} | {message.account.lower()}
    internal_domains = {domain.lower() for domain in policy.internal_domains}
    patterns = [pattern.lower() for pattern in policy.blocked]
    external: list[Address] = []
    blocked: list[Address] = []
    seen: set[str] = set()
    for address in message.participants:
        email = address.email.strip().lower()
        if not email or email in seen:
            continue
        seen.add(email)
        if email in own or email.rpartition("@")[2] in internal_domains:
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
        self.gathered: set[ItemRef] = set()  # every candidate rule 4 gathered

    def decide(self, message: Message) -> Decision:
        pid = message.provider_id
        when = message.date
        if when is None:
            return Decision(
                pid, Reason.NO_DATE, detail="the message has no date: nothing is written"
            )
        external, blocked = external_participants(message, self.policy)
        if not external:
            if blocked:
                return Decision(
                    pid,
                    Reason.BLOCKED,
                    detail=f"every external participant is blocked ({_emails(blocked)}): "
                    "nothing is written",
                )
            return Decision(
                pid,
                Reason.INTERNAL_ONLY,
                detail="no external participant, only the team's own addresses: nothing is written",
            )
        persons = _persons(message, external, self.facts)
        if not persons:
            return Decision(
                pid,
                Reason.NO_KNOWN_CONTACT,
                detail=f"no external participant is a CRM person ({_emails(external)}): "
                "nothing is written",
            )
        person_ids = tuple(person.id for person in persons)
        if self.thread.unlinked:
            return Decision(
                pid,
                Reason.UNLINKED_BY_USER,
                person_ids,
                detail="the user unlinked this thread: linked to its persons only",
            )
        if self.thread.choice is not None:
            return self._follow_choice(message, when, person_ids, self.thread.choice)
        if self.auto is not None:
            return self._follow_thread_item(message, when, person_ids, self.auto)
        items = _items_of(persons, self.facts)
        items += self._gone_items(message, items)
        candidates = self._candidates(items, message, when)
        self.gathered.update(item.ref for item in candidates)
        if self.waiting:
            choices = ", ".join(str(ref) for ref in sorted(self.gathered))
            return Decision(
                pid,
                Reason.MULTIPLE_OPEN_ITEMS,
                person_ids,
                candidates=tuple(sorted(self.gathered)),
                detail=f"the thread waits for the user's choice among {choices}: "
                "linked to its persons only",
            )
        if len(candidates) == 1:
            (self.auto,) = candidates
            return Decision(
                pid,
                Reason.SINGLE_OPEN_ITEM,
                person_ids,
                items=(self.auto.ref,),
                candidates=(self.auto.ref,),
                detail=f"{_name(self.auto)} is the only item of its persons created before the "
                f"thread ({_iso(self.thread.created_at)}) and open on {_iso(when)}: "
                f"the thread is linked to it{_kept((self.auto,))}",
            )
        if candidates:
            return self._several(pid, person_ids, candidates)
        return self._no_candidate(pid, when, person_ids, items)

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

    def _gone_items(self, message: Message, items: Iterable[Item]) -> list[Item]:
        """The items this email's activity carries in the CRM that the CRM no longer lists
        among its persons' items (a deleted lead, a deal deleted long ago): deleted, date
        unknown, so the email keeps the link (rule 6)."""
        listed = {item.ref for item in items}
        carried = self.facts.delivered.get(message.key, frozenset())
        return [Item.gone(ref) for ref in sorted(carried) if ref not in listed]

    def _open(self, item: Item, message: Message, when: datetime) -> bool:
        """Was `item` open at the message's date, for this message? A deleted item only if the
        CRM already has the message's activity linked to it (rule 6 keeps that link)."""
        delivered = item.status is ItemStatus.DELETED and self.facts.carries(message, item.ref)
        return item.open_at(when, delivered=delivered)

    def _candidates(self, items: Iterable[Item], message: Message, when: datetime) -> list[Item]:
        """Rule 2: created before the thread and open at the message's date, sorted by ref."""
        return sorted(
            (
                item
                for item in items
                if item.created_at < self.thread.created_at and self._open(item, message, when)
            ),
            key=_ref,
        )

    def _follow_choice(
        self, message: Message, when: datetime, person_ids: tuple[int, ...], ref: ItemRef
    ) -> Decision:
        """Rule 5: the user's item, for every message exchanged while it was open."""
        pid = message.provider_id
        item = self.chosen
        if item is None and self.facts.carries(message, ref):
            item = Item.gone(ref)  # no longer listed, but this email's activity carries it
        if item is None:
            return Decision(
                pid,
                Reason.ITEM_NOT_OPEN_AT_MESSAGE,
                person_ids,
                detail=f"the user chose {ref} for the thread, but it is unknown to the CRM "
                "(deleted or never read): linked to its persons only",
            )
        if self._open(item, message, when):
            return Decision(
                pid,
                Reason.USER_CHOICE,
                person_ids,
                items=(ref,),
                detail=f"linked to {_name(item)}, the item the user chose for the thread, "
                f"open on {_iso(when)}{_kept((item,))}",
            )
        if when < item.created_at:
            return Decision(
                pid,
                Reason.ITEM_NOT_OPEN_AT_MESSAGE,
                person_ids,
                detail=f"the user chose {_name(item)} for the thread, but it was created on "
                f"{_iso(item.created_at)}, after this message ({_iso(when)}): "
                "linked to its persons only",
            )
        return Decision(
            pid,
            Reason.ITEM_CLOSED_BEFORE_MESSAGE,
            person_ids,
            detail=f"the user chose {_name(item)} for the thread, but it was {_gone(item, when)}, "
            f"not open on {_iso(when)}: linked to its persons only",
        )

    def _follow_thread_item(
        self, message: Message, when: datetime, person_ids: tuple[int, ...], item: Item
    ) -> Decision:
        """Rules 3 and 6: the thread's item while it is open, persons only after."""
        pid = message.provider_id
        if self._open(item, message, when):
            return Decision(
                pid,
                Reason.LINKED_THREAD_ITEM,
                person_ids,
                items=(item.ref,),
                detail=f"linked to {_name(item)}, the thread's item, open on {_iso(when)}"
                f"{_kept((item,))}",
            )
        return Decision(
            pid,
            Reason.ITEM_CLOSED_BEFORE_MESSAGE,
            person_ids,
            detail=f"the thread's item {_name(item)} was {_gone(item, when)}, not open on "
            f"{_iso(when)}: linked to its persons only",
        )

    def _several(self, pid: str, person_ids: tuple[int, ...], candidates: list[Item]) -> Decision:
        """Rule 4, several candidates: the policy says wait, take the newest, or take them all."""
        refs = tuple(item.ref for item in candidates)
        listed = ", ".join(_name(item) for item in candidates)
        if self.policy.multiple_open_items is MultipleOpenItems.ASK:
            self.waiting = True
            return Decision(
                pid,
                Reason.MULTIPLE_OPEN_ITEMS,
                person_ids,
                candidates=refs,
                detail=f"several open items ({listed}): the thread waits for the user's choice, "
                "linked to its persons only",
            )
        newest = max(candidates, key=lambda item: (item.created_at, item.ref))
        self.auto = newest
        if self.policy.multiple_open_items is MultipleOpenItems.NEWEST:
            return Decision(
                pid,
                Reason.NEWEST_OPEN_ITEM,
                person_ids,
                items=(newest.ref,),
                candidates=refs,
                detail=f"several open items ({listed}): policy 'newest' links the thread to "
                f"{_name(newest)}, created on {_iso(newest.created_at)}{_kept((newest,))}",
            )
        return Decision(
            pid,
            Reason.ALL_OPEN_ITEMS,
            person_ids,
            items=refs,
            candidates=refs,
            detail=f"several open items ({listed}): policy 'all' links the message to each, "
            f"and the thread to the newest, {_name(newest)}{_kept(candidates)}",
        )

    def _no_candidate(
        self, pid: str, when: datetime, person_ids: tuple[int, ...], items: list[Item]
    ) -> Decision:
        """Rule 4, no candidate: say which rule-2 condition excluded each item of the persons."""
        if not items:
            return Decision(
                pid,
                Reason.NO_OPEN_ITEMS,
                person_ids,
                detail="its persons have no lead, deal or project: linked to its persons only",
            )
        started = _iso(self.thread.created_at)
        excluded = [(item, self._exclusion(item, when)) for item in sorted(items, key=_ref)]
        reasons = {reason for _, reason in excluded}
        reason = reasons.pop() if len(reasons) == 1 else Reason.NO_OPEN_ITEMS
        if reason is Reason.ITEM_CREATED_AFTER_THREAD:
            lead = f"no item was created before the thread started ({started})"

        elif reason is Reason.ITEM_CLOSED_BEFORE_MESSAGE:
            lead = f"no item was open on {_iso(when)}"
        else:
            lead = (
                f"no item was both created before the thread ({started}) and open on {_iso(when)}"
            )
        why = "; ".join(
            f"{_name(item)} {self._why(item, reason, when)}" for item, reason in excluded
        )
        return Decision(
            pid, reason, person_ids, detail=f"{lead}: {why}; linked to its persons only"
        )

    def _exclusion(self, item: Item, when: datetime) -> Reason:
        if item.created_at >= self.thread.created_at:
            return Reason.ITEM_CREATED_AFTER_THREAD
        if when < item.created_at:  # only when a message predates its thread's creation
            return Reason.ITEM_NOT_OPEN_AT_MESSAGE
        return Reason.ITEM_CLOSED_BEFORE_MESSAGE

    @staticmethod
    def _why(item: Item, reason: Reason, when: datetime) -> str:
        if reason is Reason.ITEM_CREATED_AFTER_THREAD:
            return f"was created on {_iso(item.created_at)}, not before the thread"
        if reason is Reason.ITEM_NOT_OPEN_AT_MESSAGE:
            return f"was created on {_iso(item.created_at)}, after the message"

        return f"was {_gone(item, when)}"


def _persons(message: Message, external: Sequence[Address], facts: Facts) -> list[Person]:
    """Rule 1: every person of every external address, the primary first (the sender of an inbound
    email, the first recipient of an outbound one), deduplicated by id. Several persons with one
    address come by id, whatever order the CRM listed them in."""
    ordered = list(external)
    if message.direction is Direction.OUTBOUND:
        recipients = {address.email.lower() for address in message.to + message.cc + message.bcc}
        ordered.sort(key=lambda address: address.email.lower() not in recipients)  # stable
    persons: list[Person] = []
    seen: set[int] = set()
    for address in ordered:
        found = facts.persons_by_email.get(address.email.strip().lower(), ())
        for person in sorted(found, key=lambda p: p.id):
            if person.id not in seen:
                seen.add(person.id)
                persons.append(person)
    return persons


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


def _name(item: Item) -> str:
    return f"{item.ref} {item.title!r}"


def _iso(when: datetime) -> str:
    return when.isoformat()


def _closed(item: Item) -> str:
    verb = "closed" if item.status is ItemStatus.OPEN else item.status.value
    if item.closed_at is None:
        return f"{verb} (date unknown)"
    return f"{verb} on {_iso(item.closed_at)}"


def _gone(item: Item, when: datetime) -> str:
    """How the item closed; for one deleted after the message, why that still excludes it."""
    text = _closed(item)
    if item.status is ItemStatus.DELETED and (item.closed_at is None or item.closed_at > when):
        text += " (only an email whose activity the CRM already has linked to it keeps the link)"
    return text


def _kept(items: Iterable[Item]) -> str:
    """The detail's note on deleted items a message is linked to: only an email whose activity
    the CRM already has linked to one keeps that link (rule 6)."""
    return "".join(
        f"; {_name(item)} was {_closed(item)}: this email was linked to it before "
        "(its activity in the CRM carries it), so it keeps the link"
        for item in items
        if item.status is ItemStatus.DELETED
    )


def _emails(addresses: Iterable[Address]) -> str:
    return ", ".join(address.email for address in addresses)
