"""The common model: messages and addresses from the providers, persons and items from the CRMs.

Plain frozen dataclasses, no I/O (docs/how-it-works.md). Every layer depends on this module and on
nothing else of the others: providers and CRM adapters produce these types, the linking rules
decide from them, the store persists them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True, order=True)
class Address:
    """A normalized email address: lower-cased, IDN domains in their ASCII (punycode) form."""

    email: str
    name: str = field(default="", compare=False)

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


@dataclass(frozen=True)
class Message:
    """One email as a provider reports it: headers only, never a body.

    `problems` holds reason codes found while normalizing (e.g. ``no_from``); a message whose
    problems make it unusable is recorded and skipped by the linker, never stops a round.
    """

    account: str  # the mailbox owner's address
    provider_id: str  # Gmail message id, Graph immutable id
    thread_key: str  # provider thread id (Gmail threadId, Graph conversationId)
    message_id: str | None  # RFC 5322 Message-ID, without angle brackets
    date: datetime | None  # UTC, timezone-aware
    direction: Direction
    sender: Address | None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    subject: str = ""
    snippet: str = ""
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    date_header: str = ""  # the Date header as written, for the CRM note
    problems: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The team-wide identity of the email: its Message-ID, else the provider id."""
        return self.message_id or f"{self.account}/{self.provider_id}"

    @property
    def participants(self) -> tuple[Address, ...]:
        head = (self.sender,) if self.sender else ()
        return head + self.to + self.cc + self.bcc


# -- the CRM's side: persons and items (deals, leads, projects), as every CRM adapter gives them --
class ItemKind(enum.StrEnum):
    DEAL = "deal"
    LEAD = "lead"
    PROJECT = "project"


class ItemStatus(enum.StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"
    CLOSED = "closed"  # a closed project, an archived lead
    DELETED = "deleted"


@dataclass(frozen=True, order=True)
class ItemRef:
    """`deal:12`, `lead:5d1c…`, `project:3`: the form `maillink choose` takes."""

    kind: ItemKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> ItemRef:
        kind, sep, ident = text.partition(":")
        if not sep or not ident.strip():
            raise ValueError(f"{text!r} is not an item: write deal:ID, lead:ID or project:ID")
        try:
            return cls(ItemKind(kind.strip().lower()), ident.strip())
        except ValueError:
            raise ValueError(
                f"{text!r} is not an item: the kind must be deal, lead or project"
            ) from None


@dataclass(frozen=True)
class Person:
    """A CRM contact. `organization_id`: the organization (Pipedrive) or company (HubSpot) it
    belongs to, when the CRM says; an email's activity is linked to its primary person's."""

    id: int
    name: str
    emails: tuple[str, ...] = ()
    organization_id: str | None = None


@dataclass(frozen=True)
class CrmUser:
    """A user of the CRM (Pipedrive user, HubSpot owner): who an email's activity belongs to."""

    id: str
    email: str
    name: str = ""


@dataclass(frozen=True)
class Item:
    """A lead, deal or project, with the dates the rules need.

    `closed_at` is when it was won, lost, closed or deleted; None while open (or when the CRM does
    not say when it was deleted). A deleted item is never a candidate (rule 2): the CRM no longer
    has it, so no new write may name it. The one exception is rule 6's: an email whose activity
    the CRM already has linked to the item (`delivered`) and that was exchanged before the
    deletion (or the deletion date is unknown) keeps that link, so nothing is rewritten.
    """

    ref: ItemRef
    title: str
    person_ids: frozenset[int]
    created_at: datetime
    status: ItemStatus = ItemStatus.OPEN
    closed_at: datetime | None = None

    @classmethod
    def gone(cls, ref: ItemRef) -> Item:
        """An item an email's activity carries in the CRM (`Facts.delivered`) that the CRM no
        longer lists among the email's persons' items (a deleted lead, a deal deleted long
        ago): deleted, date unknown."""
        return cls(
            ref=ref,
            title="(no longer listed in the CRM)",
            person_ids=frozenset(),
            created_at=datetime.min.replace(tzinfo=UTC),
            status=ItemStatus.DELETED,
        )

    def open_at(self, when: datetime, *, delivered: bool = False) -> bool:
        """Was the item open at `when`? Open now, or won/lost/closed after `when`. A deleted item
        only for an email whose activity the CRM already has linked to it (`delivered`), when
        the email was exchanged before the deletion (or the deletion date is unknown)."""
        if when < self.created_at:
            return False
        if self.status is ItemStatus.OPEN:
            return True
        if self.status is ItemStatus.DELETED:
            return delivered and (self.closed_at is None or self.closed_at > when)
        return self.closed_at is not None and self.closed_at > when
