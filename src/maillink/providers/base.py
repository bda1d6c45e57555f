"""The interface of a mail provider adapter, and the errors the sync loop understands."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from maillink.model import Message


class ProviderError(Exception):
    """A provider call failed after the retries."""


class NeedsReauth(ProviderError):
    """The grant was revoked or expired (`invalid_grant`): the account must reconnect."""


@dataclass(frozen=True)
class Page:
    """A page of changes. Store `cursor` (when not None) in the transaction that stores the page.

    `thread_dates` gives the date of the first message, at the provider, of threads seen in the
    page (rule 2 needs the thread's true start). `removed` are provider ids that left the mailbox.
    `listed` counts the message ids the page covered, for progress.
    """

    messages: tuple[Message, ...] = ()
    thread_dates: Mapping[str, datetime] = field(default_factory=dict)
    removed: tuple[str, ...] = ()
    cursor: str | None = None
    listed: int = 0


class Known(Protocol):
    """What the store already holds, so that adapters fetch only what is new."""

    def known_messages(self, provider_ids: Iterable[str]) -> set[str]: ...

    def thread_dates(self, thread_keys: Iterable[str]) -> dict[str, datetime]: ...


class MailProvider(Protocol):
    account: str

    def pull(
        self, cursor: str | None, known: Known, *, since: datetime | None = None
    ) -> Iterator[Page]:
        """Pages of changes since `cursor` (None: a first, full sync, back to `since`)."""
        ...
