"""The linking rules of docs/linking-rules.md, case by case: each case names the behaviour it pins."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from maillink.linking.facts import (
    Decision,
    Facts,
    LinkingPolicy,
    MultipleOpenItems,
    Reason,
    ThreadInput,
    ThreadOutcome,
)
from maillink.linking.rules import decide_thread, external_participants
from maillink.model import Address, Direction, Item, ItemRef, ItemStatus, Message, Person

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
ACCOUNT = "owner@mail.example"  # the mailbox: neither in own_addresses nor an internal domain

POLICY = LinkingPolicy(
    own_addresses=frozenset({"sales@alias.example", "colleague@mail.example"}),
    internal_domains=frozenset({"team.example"}),
    blocked=("noreply@*", "*@notifications.example.com"),
)

ALICE = Person(1, "Alice", ("alice@client.example",))
BOB = Person(2, "Bob", ("bob@client.example",))
CAROL = Person(3, "Carol", ("carol@other.example",))
DAVE = Person(4, "Dave", ("dave@other.example",))
ALICE_TWIN = Person(5, "Alice (duplicate)", ("alice@client.example",))
PERSONS = (ALICE, BOB, CAROL, DAVE)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def ref(text: str) -> ItemRef:
    return ItemRef.parse(text)


def item(
    text: str,
    title: str,
    persons: tuple[Person, ...],
    created: float,
    status: ItemStatus = ItemStatus.OPEN,
    closed: float | None = None,
) -> Item:
    return Item(
        ref=ref(text),
        title=title,
        person_ids=frozenset(p.id for p in persons),
        created_at=day(created),
        status=status,
        closed_at=None if closed is None else day(closed),
    )


def facts(items: tuple[Item, ...] = (), persons: tuple[Person, ...] = PERSONS) -> Facts:
    by_email: dict[str, list[Person]] = {}
    for person in persons:
        for email in person.emails:
            by_email.setdefault(email, []).append(person)
    by_person: dict[int, list[Item]] = {person.id: [] for person in persons}
    for it in items:
        for person_id in sorted(it.person_ids):
            by_person.setdefault(person_id, []).append(it)
    return Facts(persons_by_email=by_email, items_by_person=by_person)


def addr(email: str) -> Address:
    return Address(email)


def inbound(
    pid: str, when: float | None, sender: str, *to: str, cc: tuple[str, ...] = ()
) -> Message:
    return Message(
        account=ACCOUNT,
        provider_id=pid,
        thread_key="t1",
        message_id=f"{pid}@mail",
        date=None if when is None else day(when),
        direction=Direction.INBOUND,
        sender=addr(sender),
        to=tuple(addr(e) for e in (to or (ACCOUNT,))),
        cc=tuple(addr(e) for e in cc),
    )


def outbound(
    pid: str, when: float | None, *to: str, cc: tuple[str, ...] = (), bcc: tuple[str, ...] = ()
) -> Message:
    return Message(
        account=ACCOUNT,
        provider_id=pid,
        thread_key="t1",
        message_id=f"{pid}@mail",
        date=None if when is None else day(when),
        direction=Direction.OUTBOUND,
        sender=addr(ACCOUNT),
        to=tuple(addr(e) for e in to),
        cc=tuple(addr(e) for e in cc),
        bcc=tuple(addr(e) for e in bcc),
    )


A, B, C, D = (p.emails[0] for p in PERSONS)
UNKNOWN = "stranger@nowhere.example"

DEAL1 = item("deal:1", "Alice renewal", (ALICE,), -30)
DEAL2 = item("deal:2", "Alice upsell", (ALICE,), -10)
DEAL3 = item("deal:3", "Carol pilot", (CAROL,), -20)
LEAD1 = item("lead:1", "Alice inbound lead", (ALICE,), -5)
PROJECT1 = item("project:1", "Alice onboarding", (ALICE,), -3)
BOB_DEAL = item("deal:7", "Bob expansion", (BOB,), -15)


@dataclass(frozen=True)
class Case:
    messages: tuple[Message, ...]
    # (provider_id, reason, items) in replay order
    expected: tuple[tuple[str, Reason, tuple[str, ...]], ...]
    items: tuple[Item, ...] = ()
    linked: str | None = None
    link_source: str | None = None
    waiting: bool = False
    candidates: tuple[str, ...] = ()
    policy: LinkingPolicy = POLICY
    choice: str | None = None
    unlinked: bool = False
    created_at: datetime | None = None  # default: the first dated message's date
    persons: tuple[Person, ...] = field(default=PERSONS)
    # (provider_id, item): the CRM already has that message's activity linked to the item
    delivered: tuple[tuple[str, str], ...] = ()


def run(case: Case) -> ThreadOutcome:
    dates = [m.date for m in case.messages if m.date is not None]
    created = case.created_at or (min(dates) if dates else T0)
    thread = ThreadInput(
        key="t1",
        created_at=created,
        messages=case.messages,
        choice=None if case.choice is None else ref(case.choice),
        unlinked=case.unlinked,
    )
    keys = {m.provider_id: m.key for m in case.messages}
    delivered: dict[str, frozenset[ItemRef]] = {}
    for pid, text in case.delivered:
        delivered[keys[pid]] = delivered.get(keys[pid], frozenset()) | {ref(text)}
    known = replace(facts(case.items, case.persons), delivered=delivered)
    return decide_thread(thread, known, case.policy)


def summary(decision: Decision) -> tuple[str, Reason, tuple[str, ...]]:
    return (decision.provider_id, decision.reason, tuple(str(r) for r in decision.items))


LINKED, SINGLE, USER = Reason.LINKED_THREAD_ITEM, Reason.SINGLE_OPEN_ITEM, Reason.USER_CHOICE
MULTIPLE, NONE = Reason.MULTIPLE_OPEN_ITEMS, Reason.NO_OPEN_ITEMS
AFTER_THREAD, CLOSED = Reason.ITEM_CREATED_AFTER_THREAD, Reason.ITEM_CLOSED_BEFORE_MESSAGE
NOT_OPEN = Reason.ITEM_NOT_OPEN_AT_MESSAGE

CASES: dict[str, Case] = {
    # --- rule 1: persons; nothing written without an external known person -------------------
    "rule1_internal_only_writes_nothing": Case(
        messages=(outbound("m1", 0, "x@team.example", "sales@alias.example"),),
        expected=(("m1", Reason.INTERNAL_ONLY, ()),),
        items=(DEAL1,),
    ),
    "rule1_own_account_alias_and_internal_domain_are_not_external": Case(
        messages=(inbound("m1", 0, "colleague@mail.example", ACCOUNT, cc=("y@team.example",)),),
        expected=(("m1", Reason.INTERNAL_ONLY, ()),),
    ),
    "rule1_every_external_participant_blocked_writes_nothing": Case(
        messages=(inbound("m1", 0, "noreply@shop.example", cc=("a@notifications.example.com",)),),
        expected=(("m1", Reason.BLOCKED, ()),),
    ),
    "rule1_blocked_participant_is_ignored_known_one_linked": Case(
        messages=(inbound("m1", 0, "noreply@shop.example", A),),
        expected=(("m1", SINGLE, ("deal:1",)),),
        items=(DEAL1,),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "rule1_no_known_contact_writes_nothing": Case(
        messages=(inbound("m1", 0, UNKNOWN),),
        expected=(("m1", Reason.NO_KNOWN_CONTACT, ()),),
    ),
    "rule1_silent_messages_leave_thread_free_for_the_next": Case(
        messages=(
            inbound("m1", 0, UNKNOWN),
            outbound("m2", 1, "x@team.example"),
            inbound("m3", 2, A),
        ),
        expected=(
            ("m1", Reason.NO_KNOWN_CONTACT, ()),
            ("m2", Reason.INTERNAL_ONLY, ()),
            ("m3", SINGLE, ("deal:1",)),
        ),
        items=(DEAL1,),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "rule1_known_person_without_items_gets_persons_only": Case(
        messages=(inbound("m1", 0, B),),
        expected=(("m1", NONE, ()),),
        items=(DEAL1,),
    ),
    # --- rule 2: candidates were created before the thread and open at the message ------------
    "rule2_thread_started_before_the_deal_is_not_linked": Case(
        messages=(inbound("m1", 0, A), inbound("m2", 6, A)),
        expected=(("m1", AFTER_THREAD, ()), ("m2", AFTER_THREAD, ())),
        items=(item("deal:5", "Late deal", (ALICE,), 5),),
    ),
    "rule2_deal_created_at_the_thread_instant_is_not_a_candidate": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", AFTER_THREAD, ()),),
        items=(item("deal:5", "Same instant", (ALICE,), 0),),
    ),
    "rule2_thread_date_is_its_first_provider_message_not_the_first_seen": Case(
        messages=(inbound("m9", 10, A),),
        expected=(("m9", AFTER_THREAD, ()),),
        items=(item("deal:5", "Between", (ALICE,), 5),),
        created_at=day(0),
    ),
    "rule2_deleted_item_is_never_a_candidate": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", NONE, ()),),  # as if the CRM did not list it (HubSpot does not)
        items=(item("deal:4", "Deleted", (ALICE,), -9, ItemStatus.DELETED),),
    ),
    "rule2_deleted_item_does_not_make_several": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", SINGLE, ("deal:1",)),),
        items=(DEAL1, item("deal:4", "Deleted", (ALICE,), -9, ItemStatus.DELETED)),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "rule2_item_lost_before_the_message_is_not_a_candidate": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", CLOSED, ()),),
        items=(item("deal:6", "Lost", (ALICE,), -9, ItemStatus.LOST, -2),),
    ),
    "rule2_item_won_after_the_message_was_open_then": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", SINGLE, ("deal:6",)),),
        items=(item("deal:6", "Won later", (ALICE,), -9, ItemStatus.WON, 4),),
        linked="deal:6",
        link_source="auto",
        candidates=("deal:6",),
    ),
    "rule2_mixed_exclusions_give_no_open_items": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", NONE, ()),),
        items=(
            item("deal:5", "Late deal", (ALICE,), 5),
            item("deal:6", "Lost", (ALICE,), -9, ItemStatus.LOST, -2),
        ),
    ),
    # --- rule 3: a linked thread keeps its item --------------------------------------------------
    "rule3_later_messages_follow_the_thread_item": Case(
        messages=(inbound("m1", 0, A), outbound("m2", 1, A), inbound("m3", 2, A)),
        expected=(
            ("m1", SINGLE, ("deal:1",)),
            ("m2", LINKED, ("deal:1",)),
            ("m3", LINKED, ("deal:1",)),
        ),
        items=(DEAL1,),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "rule3_linked_thread_keeps_item_when_another_participant_has_an_open_item": Case(
        messages=(inbound("m1", 0, A), outbound("m2", 1, A, C), inbound("m3", 2, C)),
        expected=(
            ("m1", SINGLE, ("deal:1",)),
            ("m2", LINKED, ("deal:1",)),
            ("m3", LINKED, ("deal:1",)),
        ),
        items=(DEAL1, DEAL3),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    # --- rule 4: candidates of all participants together -----------------------------------------
    "rule4_single_open_item_links_thread": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", SINGLE, ("deal:1",)),),
        items=(DEAL1,),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "rule4_several_open_items_wait_for_the_user": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", MULTIPLE, ()),),
        items=(DEAL1, DEAL2),
        waiting=True,
        candidates=("deal:1", "deal:2"),
    ),
    "rule4_waiting_thread_stays_waiting_and_gathers_candidates": Case(
        messages=(inbound("m1", 0, A), inbound("m2", 1, C), inbound("m3", 2, B)),
        expected=(("m1", MULTIPLE, ()), ("m2", MULTIPLE, ()), ("m3", MULTIPLE, ())),
        items=(DEAL1, DEAL2, DEAL3),
        waiting=True,
        candidates=("deal:1", "deal:2", "deal:3"),
    ),
    "rule4_lead_and_deal_count_together_so_the_thread_waits": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", MULTIPLE, ()),),
        items=(DEAL1, LEAD1),
        waiting=True,
        candidates=("deal:1", "lead:1"),
    ),
    "rule4_project_lead_and_deal_count_together": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", MULTIPLE, ()),),
        items=(PROJECT1, LEAD1, DEAL1),
        waiting=True,
        candidates=("deal:1", "lead:1", "project:1"),
    ),
    "rule4_single_open_lead_links_thread": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", SINGLE, ("lead:1",)),),
        items=(LEAD1,),
        linked="lead:1",
        link_source="auto",
        candidates=("lead:1",),
    ),
    "rule4_single_open_project_links_thread": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", SINGLE, ("project:1",)),),
        items=(PROJECT1,),
        linked="project:1",
        link_source="auto",
        candidates=("project:1",),
    ),
    "rule4_candidates_of_all_participants_together_make_several": Case(
        messages=(outbound("m1", 0, A, cc=(C,)),),
        expected=(("m1", MULTIPLE, ()),),
        items=(DEAL1, DEAL3),
        waiting=True,
        candidates=("deal:1", "deal:3"),
    ),
    "rule4_more_than_two_recipients_none_with_open_item_not_linked": Case(
        messages=(outbound("m1", 0, A, B, C),),
        expected=(("m1", NONE, ()),),
    ),
    "rule4_more_than_two_recipients_one_with_open_item_goes_to_it": Case(
        messages=(outbound("m1", 0, A, B, C),),
        expected=(("m1", SINGLE, ("deal:7",)),),
        items=(BOB_DEAL,),
        linked="deal:7",
        link_source="auto",
        candidates=("deal:7",),
    ),
    "rule4_item_shared_by_two_participants_is_one_candidate": Case(
        messages=(outbound("m1", 0, A, B),),
        expected=(("m1", SINGLE, ("deal:8",)),),
        items=(item("deal:8", "Shared", (ALICE, BOB), -4),),
        linked="deal:8",
        link_source="auto",
        candidates=("deal:8",),
    ),
    "rule4_no_candidate_leaves_thread_free_for_a_later_message": Case(
        messages=(outbound("m1", 0, B), inbound("m2", 1, A), inbound("m3", 2, B)),
        expected=(("m1", NONE, ()), ("m2", SINGLE, ("deal:1",)), ("m3", LINKED, ("deal:1",))),
        items=(DEAL1,),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    # --- rule 5: the user's choice ----------------------------------------------------------------
    "rule5_user_choice_for_waiting_thread_links_every_message": Case(
        messages=(inbound("m1", 0, A), outbound("m2", 1, A)),
        expected=(("m1", USER, ("deal:2",)), ("m2", USER, ("deal:2",))),
        items=(DEAL1, DEAL2),
        choice="deal:2",
        linked="deal:2",
        link_source="user",
    ),
    "rule5_choice_created_after_thread_links_messages_while_it_was_open": Case(
        messages=(inbound("m1", 0, A), outbound("m2", 6, A), inbound("m3", 8, A)),
        expected=(("m1", NOT_OPEN, ()), ("m2", USER, ("deal:5",)), ("m3", USER, ("deal:5",))),
        items=(item("deal:5", "Late deal", (ALICE,), 5),),
        choice="deal:5",
        linked="deal:5",
        link_source="user",
    ),
    "rule5_choice_closed_later_stops_linking_after_the_close": Case(
        messages=(inbound("m1", 0, A), inbound("m2", 9, A)),
        expected=(("m1", USER, ("deal:6",)), ("m2", CLOSED, ())),
        items=(DEAL1, item("deal:6", "Lost", (ALICE,), -9, ItemStatus.LOST, 8)),
        choice="deal:6",
        linked="deal:6",
        link_source="user",
    ),
    "rule5_choice_changes_an_automatically_linked_thread": Case(
        messages=(inbound("m1", 0, A), inbound("m2", 1, A)),
        expected=(("m1", USER, ("deal:3",)), ("m2", USER, ("deal:3",))),
        items=(DEAL1, DEAL3),
        choice="deal:3",
        linked="deal:3",
        link_source="user",
    ),
    "rule5_choice_unknown_to_the_crm_links_persons_only": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", NOT_OPEN, ()),),
        items=(DEAL1,),
        choice="deal:99",
        linked="deal:99",
        link_source="user",
    ),
    "rule5_choice_does_not_write_silent_messages": Case(
        messages=(outbound("m1", 0, "x@team.example"), inbound("m2", 1, A)),
        expected=(("m1", Reason.INTERNAL_ONLY, ()), ("m2", USER, ("deal:1",))),
        items=(DEAL1,),
        choice="deal:1",
        linked="deal:1",
        link_source="user",
    ),
    "rule5_unlinked_thread_goes_to_persons_only": Case(
        messages=(inbound("m1", 0, A), inbound("m2", 1, UNKNOWN)),
        expected=(("m1", Reason.UNLINKED_BY_USER, ()), ("m2", Reason.NO_KNOWN_CONTACT, ())),
        items=(DEAL1,),
        unlinked=True,
    ),
    # --- rule 6: won, lost or deleted stops collecting new mail -----------------------------------
    "rule6_won_deal_stops_collecting_new_mail": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 3, A), inbound("m3", 7, A)),
        expected=(("m1", SINGLE, ("deal:6",)), ("m2", LINKED, ("deal:6",)), ("m3", CLOSED, ())),
        items=(item("deal:6", "Won", (ALICE,), -9, ItemStatus.WON, 5),),
        linked="deal:6",
        link_source="auto",
        candidates=("deal:6",),
    ),
    "rule6_lost_deal_stops_collecting_new_mail": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", SINGLE, ("deal:6",)), ("m2", CLOSED, ())),
        items=(item("deal:6", "Lost", (ALICE,), -9, ItemStatus.LOST, 5),),
        linked="deal:6",
        link_source="auto",
        candidates=("deal:6",),
    ),
    # Rule 6 for a deleted item: an email whose activity the CRM already has linked to it, and
    # exchanged before the deletion, keeps the link; later emails go to their persons only.
    "rule6_deleted_item_with_a_date_stops_collecting_after_it": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", SINGLE, ("deal:6",)), ("m2", CLOSED, ())),
        items=(item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED, 5),),
        delivered=(("m1", "deal:6"),),
        linked="deal:6",
        link_source="auto",
        candidates=("deal:6",),
    ),
    "rule6_deleted_item_without_a_date_keeps_a_delivered_link_only": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", SINGLE, ("deal:6",)), ("m2", CLOSED, ())),
        items=(item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED),),
        delivered=(("m1", "deal:6"),),
        linked="deal:6",
        link_source="auto",
        candidates=("deal:6",),
    ),
    # An email the CRM does not have yet is never linked to a deleted item, even one exchanged
    # before the deletion: that would be a new write naming it.
    "rule6_undelivered_earlier_message_is_not_linked_to_a_deleted_item": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 3, A), inbound("m3", 7, A)),
        expected=(("m1", NONE, ()), ("m2", SINGLE, ("deal:6",)), ("m3", CLOSED, ())),
        items=(item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED, 5),),
        delivered=(("m2", "deal:6"),),
        linked="deal:6",
        link_source="auto",
        candidates=("deal:6",),
    ),
    "rule6_delivered_link_to_another_item_does_not_keep_a_deleted_one": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", CLOSED, ()), ("m2", CLOSED, ())),
        items=(
            item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED, 5),
            item("deal:8", "Lost", (ALICE,), -9, ItemStatus.LOST, 0),
        ),
        delivered=(("m1", "deal:8"),),
    ),
    # A deleted lead (or a deal deleted long ago) is no longer listed at all: the email whose
    # activity carries it keeps the link, as for a deleted item of unknown date.
    "rule6_delivered_link_to_an_item_no_longer_listed_is_kept": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", SINGLE, ("lead:9",)), ("m2", CLOSED, ())),
        delivered=(("m1", "lead:9"),),
        linked="lead:9",
        link_source="auto",
        candidates=("lead:9",),
    ),
    "rule5_chosen_item_no_longer_listed_keeps_a_delivered_link": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", USER, ("lead:9",)), ("m2", NOT_OPEN, ())),
        delivered=(("m1", "lead:9"),),
        choice="lead:9",
        linked="lead:9",
        link_source="user",
    ),
    "rule5_chosen_item_deleted_later_keeps_a_delivered_link": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 3, A), inbound("m3", 7, A)),
        expected=(("m1", USER, ("deal:6",)), ("m2", CLOSED, ()), ("m3", CLOSED, ())),
        items=(item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED, 5),),
        delivered=(("m1", "deal:6"),),
        choice="deal:6",
        linked="deal:6",
        link_source="user",
    ),
    # Issue 9: a deleted item is never a candidate, not even for messages exchanged before its
    # deletion, unless the CRM already has the email linked to it (above): a new write naming it
    # is refused. With nothing delivered, the thread is replayed without it.
    "rule6_deleted_item_is_never_linked_not_even_before_its_deletion": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", NONE, ()), ("m2", NONE, ())),
        items=(item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED, 5),),
    ),
    "rule6_thread_whose_item_was_deleted_goes_to_its_other_item": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", SINGLE, ("deal:1",)), ("m2", LINKED, ("deal:1",))),
        items=(DEAL1, item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED, 5)),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "rule5_chosen_item_deleted_links_nothing": Case(
        messages=(inbound("m1", 1, A), inbound("m2", 7, A)),
        expected=(("m1", CLOSED, ()), ("m2", CLOSED, ())),
        items=(item("deal:6", "Deleted", (ALICE,), -9, ItemStatus.DELETED, 5),),
        choice="deal:6",
        linked="deal:6",
        link_source="user",
    ),
    "rule6_closed_thread_item_is_not_replaced_by_another_open_item": Case(
        messages=(inbound("m1", 1, A), outbound("m2", 7, A, C)),
        expected=(("m1", SINGLE, ("deal:6",)), ("m2", CLOSED, ())),
        items=(item("deal:6", "Won", (ALICE,), -9, ItemStatus.WON, 5), DEAL3),
        linked="deal:6",
        link_source="auto",
        candidates=("deal:6",),
    ),
    # --- policies for several candidates -----------------------------------------------------------
    "policy_newest_links_the_latest_created_and_thread_follows_it": Case(
        messages=(inbound("m1", 0, A), inbound("m2", 1, A)),
        expected=(("m1", Reason.NEWEST_OPEN_ITEM, ("deal:2",)), ("m2", LINKED, ("deal:2",))),
        items=(DEAL2, DEAL1),
        policy=replace(POLICY, multiple_open_items=MultipleOpenItems.NEWEST),
        linked="deal:2",
        link_source="auto",
        candidates=("deal:1", "deal:2"),
    ),
    "policy_newest_tie_takes_the_larger_ref": Case(
        messages=(inbound("m1", 0, A),),
        expected=(("m1", Reason.NEWEST_OPEN_ITEM, ("lead:9",)),),
        items=(item("lead:9", "Lead", (ALICE,), -4), item("deal:9", "Deal", (ALICE,), -4)),
        policy=replace(POLICY, multiple_open_items=MultipleOpenItems.NEWEST),
        linked="lead:9",
        link_source="auto",
        candidates=("deal:9", "lead:9"),
    ),
    "policy_all_links_every_candidate_then_the_thread_follows_the_newest": Case(
        messages=(inbound("m1", 0, A), inbound("m2", 1, A)),
        expected=(
            ("m1", Reason.ALL_OPEN_ITEMS, ("deal:1", "deal:2", "lead:1")),
            ("m2", LINKED, ("lead:1",)),
        ),
        items=(DEAL1, DEAL2, LEAD1),
        policy=replace(POLICY, multiple_open_items=MultipleOpenItems.ALL),
        linked="lead:1",
        link_source="auto",
        candidates=("deal:1", "deal:2", "lead:1"),
    ),
    # --- dates and replay order --------------------------------------------------------------------
    "no_date_message_is_skipped_and_leaves_the_state": Case(
        messages=(inbound("m0", None, A), inbound("m1", 0, A), inbound("m2", 1, A)),
        expected=(
            ("m1", SINGLE, ("deal:1",)),
            ("m2", LINKED, ("deal:1",)),
            ("m0", Reason.NO_DATE, ()),
        ),
        items=(DEAL1,),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "replay_follows_date_then_provider_id_not_arrival_order": Case(
        messages=(inbound("m3", 2, C), inbound("m2b", 1, A), inbound("m2a", 1, A)),
        expected=(
            ("m2a", SINGLE, ("deal:1",)),
            ("m2b", LINKED, ("deal:1",)),
            ("m3", LINKED, ("deal:1",)),
        ),
        items=(DEAL1, DEAL3),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
    "message_before_thread_creation_does_not_crash": Case(
        messages=(inbound("m1", -2, A), inbound("m2", 0, A)),
        expected=(("m1", NOT_OPEN, ()), ("m2", SINGLE, ("deal:1",))),
        items=(item("deal:1", "Alice renewal", (ALICE,), -1),),
        created_at=day(0),
        linked="deal:1",
        link_source="auto",
        candidates=("deal:1",),
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_thread_decisions(case: Case) -> None:
    outcome = run(case)
    assert [summary(d) for d in outcome.decisions] == list(case.expected)
    assert outcome.linked == (None if case.linked is None else ref(case.linked))
    assert outcome.link_source == case.link_source
    assert outcome.waiting is case.waiting
    assert [str(r) for r in outcome.candidates] == list(case.candidates)
    for decision in outcome.decisions:
        assert decision.detail, decision
        assert decision.reason.links_item == bool(decision.items)


# --- rule 1: external participants --------------------------------------------------------------

EXTERNAL_CASES = {
    "own_account_excluded": (
        outbound("m", 0, A, "Owner@Mail.example"),
        [A],
        [],
    ),
    "own_addresses_and_aliases_excluded": (
        inbound("m", 0, "sales@alias.example", A, cc=("colleague@mail.example",)),
        [A],
        [],
    ),
    "internal_domain_excluded": (
        inbound("m", 0, "boss@team.example", A, cc=("BOSS2@TEAM.EXAMPLE",)),
        [A],
        [],
    ),
    "deduplicated_by_email_in_header_order_from_to_cc_bcc": (
        outbound("m", 0, C, B, cc=(A, "CAROL@other.example"), bcc=(D,)),
        [C, B, A, D],
        [],
    ),
    "inbound_sender_comes_first": (
        inbound("m", 0, D, A, cc=(B,)),
        [D, A, B],
        [],
    ),
    "blocked_returned_apart": (
        inbound("m", 0, "noreply@shop.example", A, cc=("x@notifications.example.com",)),
        [A],
        ["noreply@shop.example", "x@notifications.example.com"],
    ),
    "blocked_pattern_matches_case_insensitively": (
        inbound("m", 0, "NoReply@Shop.example", A),
        [A],
        ["NoReply@Shop.example"],
    ),
    "blocked_pattern_matches_the_whole_address": (
        inbound("m", 0, "alerts@notifications.example.com.evil.example", A),
        ["alerts@notifications.example.com.evil.example", A],
        [],
    ),
}


@pytest.mark.parametrize(
    ("message", "external", "blocked"), list(EXTERNAL_CASES.values()), ids=list(EXTERNAL_CASES)
)
def test_external_participants(message: Message, external: list[str], blocked: list[str]) -> None:
    got_external, got_blocked = external_participants(message, POLICY)
    assert [a.email for a in got_external] == external
    assert [a.email for a in got_blocked] == blocked


def test_blocked_patterns_are_case_insensitive_both_ways() -> None:
    policy = replace(POLICY, blocked=("NOREPLY@*",))
    external, blocked = external_participants(inbound("m", 0, "noreply@shop.example", A), policy)
    assert [a.email for a in blocked] == ["noreply@shop.example"]
    assert [a.email for a in external] == [A]


# --- rule 1: persons, the primary first ------------------------------------------------------------

PERSON_CASES = {
    "inbound_sender_person_first": (inbound("m", 0, C, ACCOUNT, cc=(A,)), PERSONS, (3, 1)),
    "inbound_unknown_sender_then_recipients_in_header_order": (
        inbound("m", 0, UNKNOWN, ACCOUNT, cc=(B, A)),
        PERSONS,
        (2, 1),
    ),
    "outbound_first_recipient_person_first": (outbound("m", 0, C, A), PERSONS, (3, 1)),
    "outbound_to_before_cc_before_bcc": (
        outbound("m", 0, D, cc=(B,), bcc=(A,)),
        PERSONS,
        (4, 2, 1),
    ),
    "outbound_first_known_recipient_when_first_is_unknown": (
        outbound("m", 0, UNKNOWN, cc=(C,)),
        PERSONS,
        (3,),
    ),
    "outbound_recipients_before_an_external_sender": (
        replace(outbound("m", 0, B), sender=addr(A)),
        PERSONS,
        (2, 1),
    ),
    "every_person_of_an_address_linked_deduplicated": (
        outbound("m", 0, A, cc=(B,), bcc=(A.upper(),)),
        (*PERSONS, ALICE_TWIN),
        (1, 5, 2),
    ),
    "person_with_two_addresses_linked_once": (
        outbound("m", 0, "alice@home.example", B, A),
        (replace(ALICE, emails=(A, "alice@home.example")), BOB),
        (1, 2),
    ),
}


@pytest.mark.parametrize(
    ("message", "persons", "expected"), list(PERSON_CASES.values()), ids=list(PERSON_CASES)
)
def test_persons_primary_first(
    message: Message, persons: tuple[Person, ...], expected: tuple[int, ...]
) -> None:
    outcome = run(Case(messages=(message,), expected=(), persons=persons))
    (decision,) = outcome.decisions
    assert decision.person_ids == expected


# --- explain: readable details and candidates ------------------------------------------------------


def test_detail_names_items_and_iso_dates() -> None:
    big = item("deal:12", "Big deal", (ALICE,), -3, ItemStatus.WON, 5)
    outcome = run(
        Case(messages=(inbound("m1", 0, A), inbound("m2", 7, A)), expected=(), items=(big,))
    )
    first, second = outcome.decisions
    assert "deal:12 'Big deal'" in first.detail
    assert day(0).isoformat() in first.detail
    assert "won on " + day(5).isoformat() in second.detail
    assert day(7).isoformat() in second.detail


def test_mixed_exclusion_detail_lists_each_item_and_why() -> None:
    late = item("deal:5", "Late deal", (ALICE,), 5)
    lost = item("deal:6", "Lost", (ALICE,), -9, ItemStatus.LOST, -2)
    gone = item("lead:2", "Gone", (ALICE,), -9, ItemStatus.DELETED)
    outcome = run(Case(messages=(inbound("m1", 0, A),), expected=(), items=(gone, lost, late)))
    (decision,) = outcome.decisions
    assert decision.reason is NONE
    assert "deal:5 'Late deal' was created on " + day(5).isoformat() in decision.detail
    assert "deal:6 'Lost' was lost on " + day(-2).isoformat() in decision.detail
    assert "lead:2 'Gone' was deleted" in decision.detail


def test_kept_link_to_a_deleted_item_says_why() -> None:
    case = CASES["rule6_deleted_item_with_a_date_stops_collecting_after_it"]
    first, second = run(case).decisions
    assert (
        "deal:6 'Deleted' was deleted on 2024-03-06T09:00:00+00:00: this email was linked to it "
        "before (its activity in the CRM carries it), so it keeps the link" in first.detail
    )
    assert "deal:6 'Deleted' was deleted on 2024-03-06T09:00:00+00:00" in second.detail
    assert "keeps the link" not in second.detail
    unknown = run(CASES["rule6_deleted_item_without_a_date_keeps_a_delivered_link_only"])
    assert "was deleted (date unknown): this email was linked to it before" in (
        unknown.decisions[0].detail
    )


def test_unknown_choice_detail_says_the_crm_does_not_know_it() -> None:
    outcome = run(Case(messages=(inbound("m1", 0, A),), expected=(), choice="deal:99"))
    assert "unknown to the CRM" in outcome.decisions[0].detail


def test_several_candidates_are_listed_on_the_decision() -> None:
    outcome = run(Case(messages=(inbound("m1", 0, A),), expected=(), items=(DEAL2, LEAD1, DEAL1)))
    (decision,) = outcome.decisions
    assert decision.candidates == (ref("deal:1"), ref("deal:2"), ref("lead:1"))
    assert decision.person_ids == (1,)


def test_waiting_messages_carry_the_candidates_gathered_so_far() -> None:
    outcome = run(
        Case(
            messages=(inbound("m1", 0, A), inbound("m2", 1, C)),
            expected=(),
            items=(DEAL1, DEAL2, DEAL3),
        )
    )
    first, second = outcome.decisions
    assert first.candidates == (ref("deal:1"), ref("deal:2"))
    assert second.candidates == (ref("deal:1"), ref("deal:2"), ref("deal:3"))


@pytest.mark.parametrize(
    "policy",
    [MultipleOpenItems.NEWEST, MultipleOpenItems.ALL],
    ids=["policy_newest", "policy_all"],
)
def test_newest_and_all_decisions_carry_the_candidates(policy: MultipleOpenItems) -> None:
    outcome = run(
        Case(
            messages=(inbound("m1", 0, A),),
            expected=(),
            items=(DEAL1, DEAL2),
            policy=replace(POLICY, multiple_open_items=policy),
        )
    )
    assert outcome.decisions[0].candidates == (ref("deal:1"), ref("deal:2"))


# --- determinism ---------------------------------------------------------------------------------


def test_outcome_does_not_depend_on_the_order_of_facts() -> None:
    messages = (inbound("m1", 0, A), outbound("m2", 1, A, C), inbound("m3", 9, C))
    items = (DEAL1, DEAL2, DEAL3, LEAD1, item("deal:6", "Lost", (ALICE,), -9, ItemStatus.LOST, 5))
    thread = ThreadInput("t1", day(0), messages, choice=ref("deal:6"))
    forward = facts(items)
    backward = Facts(
        persons_by_email={
            k: list(reversed(v)) for k, v in reversed(list(forward.persons_by_email.items()))
        },
        items_by_person={
            k: list(reversed(v)) for k, v in reversed(list(forward.items_by_person.items()))
        },
    )
    for choice in (None, ref("deal:6")):
        thread = replace(thread, choice=choice)
        assert decide_thread(thread, forward, POLICY) == decide_thread(thread, backward, POLICY)


def test_messages_arriving_in_reverse_give_the_same_outcome() -> None:
    case = CASES["rule4_waiting_thread_stays_waiting_and_gathers_candidates"]
    assert run(case) == run(replace(case, messages=tuple(reversed(case.messages))))


def test_the_table_covers_every_reason_the_rules_give() -> None:
    given = {d.reason for case in CASES.values() for d in run(case).decisions}
    skipped_by_the_linker = {Reason.DUPLICATE_MESSAGE, Reason.INVALID_MESSAGE}
    assert given == set(Reason) - skipped_by_the_linker
