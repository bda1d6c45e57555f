"""The sentence that explains each decision (`maillink explain`, the web thread page), from a
table keyed by reason.

The rules (linking/rules.py) return the reason, the items and candidates, and a `Why`: the few
facts the sentence names (the message's and the thread's dates, the item concerned, the
candidates, the items rule 2 excluded and why). `explain` picks the reason's template (for some
reasons, the one for the case: the user's choice, the candidates rule 2 excluded, a thread that
already waits) and fills it in. A decision's `detail` is this sentence (linking/facts.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from maillink.linking.reasons import Reason
from maillink.model import Item, ItemRef, ItemStatus


@dataclass(frozen=True)
class Why:
    """The facts a decision's explanation names. Every field is optional: a template names
    only what its reason needs, and renders something readable when a fact is missing."""

    when: datetime | None = None  # the message's date
    started: datetime | None = None  # when the thread was created (rule 2)
    addresses: tuple[str, ...] = ()  # rule 1: the external participants, or the blocked ones
    # The item the message is about: its one candidate, the newest of several, the thread's
    # item (rule 3) or the one the user chose (rule 5).
    item: Item | None = None
    candidates: tuple[Item, ...] = ()  # rule 4: the message's candidates
    excluded: tuple[tuple[Item, Reason], ...] = ()  # rule 2: each item of the persons, and why
    chosen: ItemRef | None = None  # rule 5: the item the user chose for the thread
    waiting: bool = False  # rule 4: the thread already waits for the user's choice
    key: str = ""  # a duplicate: the email's key (its Message-ID)
    first: str = ""  # a duplicate: where the email was stored first


class Case(enum.Enum):
    """Which of a reason's templates applies, when it has several."""

    PLAIN = "plain"
    CHOICE = "choice"  # rule 5: the item the user chose
    UNKNOWN_CHOICE = "unknown_choice"  # rule 5: the user chose an item the CRM does not have
    EXCLUDED = "excluded"  # rule 2 excluded every item of the persons
    WAITING = "waiting"  # rule 4: the thread already waits for the user's choice


# Placeholders: {when} {started} the dates; {item} the item concerned, {created} its creation
# date, {gone} how it closed; {candidates} the candidates by name, {refs} by reference;
# {kept} the note on deleted items a delivered email keeps; {excluded} each excluded item and
# why; {chosen} the user's choice; {addresses}; {key} and {first} for a duplicate.
TEMPLATES: Mapping[Reason, str | Mapping[Case, str]] = {
    # rule 1
    Reason.NO_KNOWN_CONTACT: "no external participant is a CRM person ({addresses}): "
    "nothing is written",
    Reason.INTERNAL_ONLY: "no external participant, only the team's own addresses: "
    "nothing is written",
    Reason.BLOCKED: "every external participant is blocked ({addresses}): nothing is written",
    # rule 2
    Reason.ITEM_CREATED_AFTER_THREAD: "no item was created before the thread started "
    "({started}): {excluded}; linked to its persons only",
    Reason.ITEM_CLOSED_BEFORE_MESSAGE: {
        Case.EXCLUDED: "no item was open on {when}: {excluded}; linked to its persons only",
        # rules 3 and 6, 5 and 6
        Case.PLAIN: "the thread's item {item} was {gone}, not open on {when}: "
        "linked to its persons only",
        Case.CHOICE: "the user chose {item} for the thread, but it was {gone}, not open on "
        "{when}: linked to its persons only",
    },
    Reason.ITEM_NOT_OPEN_AT_MESSAGE: {
        Case.EXCLUDED: "no item was both created before the thread ({started}) and open on "
        "{when}: {excluded}; linked to its persons only",
        # rule 5
        Case.PLAIN: "{item} was created on {created}, after this message ({when}): "
        "linked to its persons only",
        Case.CHOICE: "the user chose {item} for the thread, but it was created on {created}, "
        "after this message ({when}): linked to its persons only",
        Case.UNKNOWN_CHOICE: "the user chose {chosen} for the thread, but it is unknown to the "
        "CRM (deleted or never read): linked to its persons only",
    },
    # rule 3
    Reason.LINKED_THREAD_ITEM: "linked to {item}, the thread's item, open on {when}{kept}",
    # rule 4
    Reason.SINGLE_OPEN_ITEM: "{item} is the only item of its persons created before the thread "
    "({started}) and open on {when}: the thread is linked to it{kept}",
    Reason.MULTIPLE_OPEN_ITEMS: {
        Case.PLAIN: "several open items ({candidates}): the thread waits for the user's choice, "
        "linked to its persons only",
        Case.WAITING: "the thread waits for the user's choice among {refs}: "
        "linked to its persons only",
    },
    Reason.NEWEST_OPEN_ITEM: "several open items ({candidates}): policy 'newest' links the "
    "thread to {item}, created on {created}{kept}",
    Reason.ALL_OPEN_ITEMS: "several open items ({candidates}): policy 'all' links the message "
    "to each, and the thread to the newest, {item}{kept}",
    Reason.NO_OPEN_ITEMS: {
        Case.PLAIN: "its persons have no lead, deal or project: linked to its persons only",
        Case.EXCLUDED: "no item was both created before the thread ({started}) and open on "
        "{when}: {excluded}; linked to its persons only",
    },
    # rule 5
    Reason.USER_CHOICE: "linked to {item}, the item the user chose for the thread, "
    "open on {when}{kept}",
    Reason.UNLINKED_BY_USER: "the user unlinked this thread: linked to its persons only",
    # before the rules
    Reason.NO_DATE: "the message has no date: nothing is written",
    Reason.DUPLICATE_MESSAGE: "the same email{key} was stored first as {first}, whose decision "
    "writes its one activity",
    Reason.INVALID_MESSAGE: "the message could not be read: nothing is written",
}

# Rule 2, for each item it excluded: why the item is no candidate for the message.
EXCLUSIONS: Mapping[Reason, str] = {
    Reason.ITEM_CREATED_AFTER_THREAD: "was created on {created}, not before the thread",
    Reason.ITEM_NOT_OPEN_AT_MESSAGE: "was created on {created}, after the message",
    Reason.ITEM_CLOSED_BEFORE_MESSAGE: "was {gone}",
}


def explain(
    reason: Reason,
    why: Why,
    items: Sequence[ItemRef] = (),
    candidates: Sequence[ItemRef] = (),
) -> str:
    """The sentence for a decision: `reason`'s template filled in from `why` and the refs the
    message is linked to (`items`) and its candidates."""
    return template(reason, case(why)).format_map(_Fields(why, items, candidates))


def template(reason: Reason, which: Case) -> str:
    """The template of `reason` for this case (its plain one when it has no other)."""
    entry = TEMPLATES[reason]
    if isinstance(entry, str):
        return entry
    return entry.get(which, entry[Case.PLAIN])


def case(why: Why) -> Case:
    """Which template of its reason a decision with these facts takes."""
    if why.excluded:
        return Case.EXCLUDED
    if why.waiting:
        return Case.WAITING
    if why.chosen is not None:
        return Case.CHOICE if why.item is not None else Case.UNKNOWN_CHOICE
    return Case.PLAIN


class _Fields:
    """The placeholders of a template, each computed when the template names it."""

    __slots__ = ("why", "linked", "candidate_refs")

    def __init__(self, why: Why, linked: Sequence[ItemRef], candidate_refs: Sequence[ItemRef]):
        self.why = why
        self.linked = linked
        self.candidate_refs = candidate_refs

    def __getitem__(self, name: str) -> str:
        placeholder: Callable[[_Fields], str] = getattr(_Fields, name)
        return placeholder(self)

    def when(self) -> str:
        return _iso(self.why.when)

    def started(self) -> str:
        return _iso(self.why.started)

    def item(self) -> str:
        if self.why.item is not None:
            return _name(self.why.item)
        return str(self.why.chosen) if self.why.chosen is not None else "the item"

    def created(self) -> str:
        return _iso(self.why.item.created_at if self.why.item is not None else None)

    def gone(self) -> str:
        return _gone(self.why.item, self.why.when) if self.why.item is not None else "closed"

    def candidates(self) -> str:
        return ", ".join(_name(item) for item in self.why.candidates)

    def refs(self) -> str:
        return ", ".join(str(ref) for ref in self.candidate_refs)

    def kept(self) -> str:
        """The note on deleted items the message is linked to: only an email whose activity
        the CRM already has linked to one keeps that link (rule 6)."""
        concerned = self.why.candidates or (() if self.why.item is None else (self.why.item,))
        return "".join(
            f"; {_name(item)} was {_closed(item)}: this email was linked to it before "
            "(its activity in the CRM carries it), so it keeps the link"
            for item in concerned
            if item.ref in self.linked and item.status is ItemStatus.DELETED
        )

    def excluded(self) -> str:
        return "; ".join(
            f"{_name(item)} "
            + EXCLUSIONS[reason].format(
                created=_iso(item.created_at), gone=_gone(item, self.why.when)
            )
            for item, reason in self.why.excluded
        )

    def chosen(self) -> str:
        return str(self.why.chosen) if self.why.chosen is not None else "an item"

    def addresses(self) -> str:
        return ", ".join(self.why.addresses)

    def key(self) -> str:
        return f" ({self.why.key})" if self.why.key else ""

    def first(self) -> str:
        return self.why.first or "another mailbox"


def _name(item: Item) -> str:
    return f"{item.ref} {item.title!r}"


def _iso(when: datetime | None) -> str:
    return when.isoformat() if when is not None else "(date unknown)"


def _closed(item: Item) -> str:
    verb = "closed" if item.status is ItemStatus.OPEN else item.status.value
    if item.closed_at is None:
        return f"{verb} (date unknown)"
    return f"{verb} on {_iso(item.closed_at)}"


def _gone(item: Item, when: datetime | None) -> str:
    """How the item closed; for one deleted after the message, why that still excludes it."""
    text = _closed(item)
    if item.status is ItemStatus.DELETED and (
        item.closed_at is None or when is None or item.closed_at > when
    ):
        text += " (only an email whose activity the CRM already has linked to it keeps the link)"
    return text
