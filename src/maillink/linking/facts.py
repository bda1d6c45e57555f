"""What the linking rules decide from: CRM persons and items, the policy, and the decisions made.

Plain frozen dataclasses, no I/O. The CRM adapters produce `Person` and `Item`; the rules return
`Decision`s and a `ThreadOutcome`. `Reason` (linking/reasons.py) is re-exported here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from maillink.linking.explanations import Why, explain
from maillink.linking.reasons import Reason
from maillink.model import Item, ItemRef, Message, Person


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
    """The outcome for one message: the persons and items it is linked to, and why.

    `why` holds the facts the explanation names; `detail`, the sentence stored with the decision
    and shown by `maillink explain`, is rendered from the reason, the items and `why` by the
    table of linking/explanations.py, unless the caller gives one.
    """

    provider_id: str
    reason: Reason
    person_ids: tuple[int, ...] = ()
    items: tuple[ItemRef, ...] = ()
    candidates: tuple[ItemRef, ...] = ()
    detail: str = ""
    why: Why = field(default=Why(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.detail:
            text = explain(self.reason, self.why, self.items, self.candidates)
            object.__setattr__(self, "detail", text)

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
