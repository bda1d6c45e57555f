"""The explanation table (linking/explanations.py): every reason has a sentence, each template
renders on minimal facts, and a decision's `detail` is that sentence unless the caller gives one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from maillink.linking.explanations import TEMPLATES, Case, Why, case, explain
from maillink.linking.facts import Decision, Reason
from maillink.model import Item, ItemRef, ItemStatus

DEAL = ItemRef.parse("deal:6")
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

# The least each case needs to be that case (`explanations.case`).
MINIMAL = {
    Case.PLAIN: Why(),
    Case.CHOICE: Why(chosen=DEAL, item=Item.gone(DEAL)),
    Case.UNKNOWN_CHOICE: Why(chosen=DEAL),
    Case.EXCLUDED: Why(excluded=((Item.gone(DEAL), Reason.ITEM_CLOSED_BEFORE_MESSAGE),)),
    Case.WAITING: Why(waiting=True),
}


def test_every_reason_has_an_explanation() -> None:
    assert set(TEMPLATES) == set(Reason)
    for reason, entry in TEMPLATES.items():
        if not isinstance(entry, str):
            assert Case.PLAIN in entry, reason  # the fallback for any other case


@pytest.mark.parametrize("reason", list(Reason), ids=str)
@pytest.mark.parametrize("which", list(Case), ids=lambda c: c.value)
def test_each_template_renders_on_minimal_facts(reason: Reason, which: Case) -> None:
    assert case(MINIMAL[which]) is which
    text = explain(reason, MINIMAL[which])
    assert text and "{" not in text and "}" not in text
    assert Decision("m1", reason, why=MINIMAL[which]).detail == text


def test_a_given_detail_is_kept() -> None:
    decision = Decision("m1", Reason.DUPLICATE_MESSAGE, (1,), detail="stored first elsewhere")
    assert decision.detail == "stored first elsewhere"


def test_the_facts_do_not_change_what_a_decision_equals() -> None:
    """Decisions compare as before: on their reason, links and sentence, not on `why`."""
    first = Decision("m1", Reason.NO_KNOWN_CONTACT, why=Why(addresses=("a@x.example",)))
    again = Decision("m1", Reason.NO_KNOWN_CONTACT, why=Why(addresses=("a@x.example",)))
    other = Decision("m1", Reason.NO_KNOWN_CONTACT, why=Why(addresses=("b@x.example",)))
    assert first == again and first != other
    assert "a@x.example" in first.detail and "why=" not in repr(first)


def test_duplicate_sentence_names_the_email_and_where_it_was_stored_first() -> None:
    why = Why(key="<k@x.example>", first="message m9 of account 2")
    assert explain(Reason.DUPLICATE_MESSAGE, why) == (
        "the same email (<k@x.example>) was stored first as message m9 of account 2, "
        "whose decision writes its one activity"
    )
    assert explain(Reason.DUPLICATE_MESSAGE, Why()) == (
        "the same email was stored first as another mailbox, whose decision writes its one activity"
    )


def test_kept_note_names_only_deleted_items_the_message_is_linked_to() -> None:
    deleted = Item(DEAL, "Deleted", frozenset({1}), T0, ItemStatus.DELETED, T0.replace(day=6))
    other = Item(ItemRef.parse("deal:7"), "Other", frozenset({1}), T0, ItemStatus.DELETED)
    why = Why(when=T0.replace(day=2), item=other, candidates=(deleted, other))
    text = explain(Reason.NEWEST_OPEN_ITEM, why, items=(other.ref,), candidates=(DEAL, other.ref))
    assert "deal:7 'Other' was deleted (date unknown): this email was linked to it before" in text
    assert "deal:6 'Deleted' was deleted on" not in text
