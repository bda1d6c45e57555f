"""The common thread model: plain frozen dataclasses, no I/O (docs/how-it-works.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


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


@dataclass(frozen=True)
class Thread:
    key: str
    first_message_at: datetime
