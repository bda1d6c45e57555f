"""Fuzzing the linking rules (DESIGN §3) over random threads and CRM facts: a closed or
later-created item is never linked, a message goes to at most one item (Pipedrive's "ask"), and
decisions depend neither on the order messages arrive in nor on the order the CRM lists things.
The generators are the rule properties' (tests/linking/test_rules_properties.py)."""

from __future__ import annotations

from dataclasses import replace
from random import Random

from hypothesis import given
from hypothesis import strategies as st
from tests.linking.test_rules_properties import (
    SETTINGS,
    Scenario,
    items_by_ref,
    policy,
    scenarios,
    thread_fields,
)

from maillink.linking.facts import Facts, MultipleOpenItems, Reason
from maillink.linking.rules import decide_thread


@SETTINGS
@given(scenarios(), st.sampled_from(MultipleOpenItems))
def test_a_closed_or_later_created_item_is_never_linked(
    scenario: Scenario, multiple: MultipleOpenItems
) -> None:
    thread, facts, _ = scenario
    known = items_by_ref(facts)
    dates = {m.provider_id: m.date for m in thread.messages}
    for decision in decide_thread(thread, facts, policy(multiple)).decisions:
        when = dates[decision.provider_id]
        for ref in decision.items:
            item = known[ref]
            assert when is not None
            assert item.created_at <= when, ("created after the message", decision, item)
            assert item.open_at(when), ("closed before the message", decision, item)
            if ref != thread.choice:  # only the user may link an item younger than the thread
                assert item.created_at < thread.created_at, ("younger than the thread", decision)


@SETTINGS
@given(scenarios(), st.sampled_from([MultipleOpenItems.ASK, MultipleOpenItems.NEWEST]))
def test_a_message_is_linked_to_at_most_one_item(
    scenario: Scenario, multiple: MultipleOpenItems
) -> None:
    thread, facts, _ = scenario
    outcome = decide_thread(thread, facts, policy(multiple))
    for decision in outcome.decisions:
        assert len(decision.items) <= 1, decision
        assert not decision.items or decision.reason.links_item
    linked = {d.items[0] for d in outcome.decisions if d.items}
    if outcome.linked is not None and thread.choice is None:
        # the thread's one automatic link is the only item its messages go to
        assert linked <= {outcome.linked}, (outcome.linked, linked)


def _shuffled(facts: Facts, rng: Random) -> Facts:
    persons = list(facts.persons_by_email.items())
    rng.shuffle(persons)
    items = [
        (pid, rng.sample(list(found), len(found))) for pid, found in facts.items_by_person.items()
    ]
    rng.shuffle(items)
    return Facts(
        persons_by_email={email: rng.sample(list(p), len(p)) for email, p in persons},
        items_by_person=dict(items),
    )


@SETTINGS
@given(scenarios(), st.randoms(use_true_random=False))
def test_decisions_depend_neither_on_arrival_order_nor_on_the_crms_order(
    scenario: Scenario, rng: Random
) -> None:
    thread, facts, pol = scenario
    baseline = decide_thread(thread, facts, pol)
    arrival = list(thread.messages)
    rng.shuffle(arrival)
    other = decide_thread(replace(thread, messages=arrival), _shuffled(facts, rng), pol)
    assert {d.provider_id: d for d in other.decisions} == {
        d.provider_id: d for d in baseline.decisions
    }
    assert thread_fields(other) == thread_fields(baseline)


@SETTINGS
@given(scenarios())
def test_a_message_without_a_known_person_writes_nothing(scenario: Scenario) -> None:
    thread, facts, pol = scenario
    for decision in decide_thread(thread, facts, pol).decisions:
        if not decision.person_ids:
            assert not decision.items and not decision.reason.writes_activity, decision
        if decision.reason in (Reason.NO_KNOWN_CONTACT, Reason.INTERNAL_ONLY, Reason.BLOCKED):
            assert not decision.person_ids and not decision.items
