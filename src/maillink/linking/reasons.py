"""Why a message is (or is not) linked: the reason codes stored with every decision.

`linking/explanations.py` holds the sentence each one renders; `linking/facts.py` re-exports
`Reason` with the other types the rules decide from.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Why a message is (or is not) linked to an item. Stored with every decision."""

    # linked to an item
    LINKED_THREAD_ITEM = (
        "linked_thread_item"  # rule 3: the thread's item, open at the message's date
    )
    SINGLE_OPEN_ITEM = "single_open_item"  # rule 4: exactly one candidate
    USER_CHOICE = "user_choice"  # rule 5: the user chose the thread's item
    NEWEST_OPEN_ITEM = "newest_open_item"  # policy "newest": several candidates, newest taken
    ALL_OPEN_ITEMS = "all_open_items"  # policy "all": several candidates, all taken
    # linked to persons only
    MULTIPLE_OPEN_ITEMS = "multiple_open_items"  # rule 4: waits for the user's choice
    NO_OPEN_ITEMS = "no_open_items"  # rule 4: the persons have no item at all
    ITEM_CREATED_AFTER_THREAD = "item_created_after_thread"  # rule 2: no retroactive linking
    ITEM_CLOSED_BEFORE_MESSAGE = "item_closed_before_message"  # rules 2, 3, 6
    ITEM_NOT_OPEN_AT_MESSAGE = "item_not_open_at_message"  # rule 5: chosen item created after it
    # nothing written
    NO_KNOWN_CONTACT = "no_known_contact"  # rule 1: no external participant is a CRM person
    INTERNAL_ONLY = "internal_only"  # no external participant at all
    BLOCKED = "blocked"  # every external participant is blocked
    UNLINKED_BY_USER = "unlinked_by_user"  # the user unlinked the thread: persons only
    # skipped before the rules
    NO_DATE = "no_date"
    DUPLICATE_MESSAGE = "duplicate_message"  # the same email already came through another mailbox
    INVALID_MESSAGE = "invalid_message"

    @property
    def links_item(self) -> bool:
        return self in _LINKING_REASONS

    @property
    def writes_activity(self) -> bool:
        return self not in _SILENT_REASONS


_LINKING_REASONS = frozenset(
    {
        Reason.LINKED_THREAD_ITEM,
        Reason.SINGLE_OPEN_ITEM,
        Reason.USER_CHOICE,
        Reason.NEWEST_OPEN_ITEM,
        Reason.ALL_OPEN_ITEMS,
    }
)
_SILENT_REASONS = frozenset(
    {
        Reason.NO_KNOWN_CONTACT,
        Reason.INTERNAL_ONLY,
        Reason.BLOCKED,
        Reason.NO_DATE,
        Reason.DUPLICATE_MESSAGE,
        Reason.INVALID_MESSAGE,
    }
)
