"""What the linking rules decide from: CRM persons and items, the policy, and the decisions made.

Plain frozen dataclasses, no I/O. The CRM adapters produce `Person` and `Item`; the rules return
`Decision`s and a `ThreadOutcome`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from maillink.model import Item, ItemRef, Message, Person


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


class MultipleOpenItems(enum.StrEnum):
    ASK = "ask"  # Pipedrive's rule: the user chooses
    NEWEST = "newest"
    ALL = "all"


@dataclass(frozen=True)
class LinkingPolicy:
    """Who counts as "us", who is ignored, and what to do with several candidates.

    `own_addresses` are lower-cased full addresses (every connected mailbox and alias);
    `internal_domains` lower-cased domains; `blocked` shell-style patterns (`noreply@*`,
    `*@notifications.example.com`) matched case-insensitively against the whole address.
    """

    own_addresses: frozenset[str] = frozenset()
    internal_domains: frozenset[str] = frozenset()
    blocked: tuple[str, ...] = ()
    multiple_open_items: MultipleOpenItems = MultipleOpenItems.ASK
    create_persons: bool = False  # the linker creates persons for unknown external addresses


@dataclass(frozen=True)
class Facts:
    """What the CRM says, gathered by the linker (through its caches) before deciding.

    `persons_by_email` maps a lower-cased address to its persons (empty: no such person);
    `items_by_person` maps a person id to all of their items, open or not. `delivered` maps an
    email's key (`Message.key`) to the items its activity already carries in the CRM (only
    emails whose activity was created there and whose latest version was delivered): rule 6
    keeps those links when an item is deleted later.
    """

    persons_by_email: Mapping[str, Sequence[Person]] = field(default_factory=dict)
    items_by_person: Mapping[int, Sequence[Item]] = field(default_factory=dict)
    delivered: Mapping[str, frozenset[ItemRef]] = field(default_factory=dict)

    def carries(self, message: Message, ref: ItemRef) -> bool:
        """Does the CRM already have this email's activity linked to `ref`?"""
        return ref in self.delivered.get(message.key, frozenset())


@dataclass(frozen=True)
class ThreadInput:
    """One thread of one mailbox, as the rules see it.

    `created_at` is the date of the thread's first message at the provider (rule 2). `choice` is
    the item the user chose for the thread (rule 5), if any; `unlinked` is True when the user
    explicitly unlinked it (messages then go to their persons only).
    """

    key: str
    created_at: datetime
    messages: Sequence[Message]
    choice: ItemRef | None = None
    unlinked: bool = False


@dataclass(frozen=True)
class Decision:
    """The outcome for one message: the persons and items it is linked to, and why."""

    provider_id: str
    reason: Reason
    person_ids: tuple[int, ...] = ()
    items: tuple[ItemRef, ...] = ()
    candidates: tuple[ItemRef, ...] = ()
    detail: str = ""

    @property
    def item(self) -> ItemRef | None:
        return self.items[0] if self.items else None


@dataclass(frozen=True)
class ThreadOutcome:
    """The thread's link after replaying its messages, and each message's decision."""

    linked: ItemRef | None
    link_source: str | None  # "auto", "user" or None
    waiting: bool  # several candidates, policy "ask", no choice yet
    candidates: tuple[ItemRef, ...]
    decisions: tuple[Decision, ...]
