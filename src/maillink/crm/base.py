"""The interface every CRM adapter offers the linker and the outbox.

Small on purpose: find persons by email, list a person's items, write one activity per email.
It fits Pipedrive (persons/deals/leads/projects/activities) and HubSpot (contacts/deals/engagements).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from maillink.model import Address, CrmUser, Direction, Item, ItemKind, ItemRef, Person


class CRMError(Exception):
    """A CRM call failed in a way a retry will not fix (bad request, not found…)."""


class CRMUnavailable(CRMError):
    """The CRM could not be reached or answered 5xx after the retries: try again later."""


class CRMRefused(CRMError):
    """The CRM refused this write for good (a 4xx other than 401/403/429): sending the same
    write again will not help. `status` is the HTTP status, `answer` the CRM's own words."""

    def __init__(self, message: str, status: int = 400, answer: str = ""):
        super().__init__(message)
        self.status = status
        self.answer = answer or message


class CRMRecordGone(CRMRefused):
    """The write names a person or item the CRM no longer has (deleted, merged, archived since
    the decision): refresh the facts and decide again. `kind` is "person", "deal", "lead" or
    "project" and `record_id` its id, when the CRM's answer says which."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        answer: str = "",
        kind: str | None = None,
        record_id: str | None = None,
    ):
        super().__init__(message, status, answer)
        self.kind = kind
        self.record_id = record_id


class CRMActivityGone(CRMRefused):
    """The activity to update is no longer in the CRM (deleted there, by a person or with its
    item): nothing is updated; creating it again is a person's call (`outbox retry`)."""


class CRMAuthError(CRMError):
    """The CRM refused the credentials: the configuration must change."""


class CRMRateLimited(CRMError):
    """429 from the CRM. `daily` means the day's token budget is spent: park writes until reset."""

    def __init__(self, message: str, retry_after: float, daily: bool):
        super().__init__(message)
        self.retry_after = retry_after
        self.daily = daily


@dataclass(frozen=True)
class ActivityDraft:
    """One email as one CRM activity.

    `person_ids` has the primary participant first. `items` holds at most one item of each
    kind (the adapter sets deal_id / lead_id / project_id and clears the others). `note` is HTML
    and ends with the line `maillink-id: <key>`. `owner_id` is the CRM user of the rep whose
    mailbox the email came from (`maillink.crm.owners`). `direction`, `sender`, `to` and `cc`
    are the email's own, for CRMs that store them as fields (HubSpot's headers); None and ()
    in drafts stored before they existed.
    """

    key: str
    subject: str
    when: datetime  # UTC
    person_ids: tuple[int, ...]
    items: tuple[ItemRef, ...]
    note: str
    owner_id: str | None = None  # the CRM user who owns it; None: the CRM's default (the token's)
    organization_id: str | None = None  # the primary person's organization / company
    direction: Direction | None = None
    sender: Address | None = None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()


@dataclass(frozen=True)
class CrmChange:
    """The cached facts one CRM change notification makes stale (Pipedrive's and HubSpot's
    webhooks): `entity` in Pipedrive's words (deal, lead, person)."""

    entity: str
    action: str
    entity_id: str | None
    person_ids: frozenset[int]
    emails: frozenset[str]
    # An item event whose person cannot be told (a delete without `previous`): forget every
    # person's items rather than keep a stale one.
    everyone: bool = False

    @property
    def empty(self) -> bool:
        return not (self.person_ids or self.emails or self.everyone)


@dataclass(frozen=True)
class Changes:
    """What changed in the CRM since a time: whose items and which addresses to forget."""

    person_ids: frozenset[int]  # their items changed (status, new item…)
    emails: frozenset[str]  # persons with these addresses were created or changed
    until: datetime  # ask again from here next time


@dataclass(frozen=True)
class Listing:
    """One pass over the CRM's persons and items, for the mirror (`maillink.crm.mirror`).

    `since` None: everything (the mirror is replaced); else what changed since then. `items` are
    kept (deleted ones as DELETED, as `items_of_person` gives them); `gone` are no longer listed
    (archived); `whole` are the kinds listed whole every time (the mirror's rows of those kinds
    are replaced: a CRM that cannot say what changed in them). `complete` is False when the CRM
    holds more than the limit: nothing else is then filled in.
    """

    since: datetime | None
    persons: tuple[Person, ...] = ()
    items: tuple[Item, ...] = ()
    gone: tuple[Item, ...] = ()
    whole: frozenset[ItemKind] = frozenset()
    complete: bool = True
    records: int = 0


class MirrorSource(Protocol):
    """What an adapter offers to be mirrored: listings, and the items it keeps out of them."""

    def list_records(self, since: datetime | None, limit: int) -> Listing:
        """The persons and items changed since `since` (all when None), at most `limit`."""
        ...

    def unmirrored_items(self, person_id: int) -> list[Item]:
        """The person's items that listings leave out (Pipedrive: projects, from their own
        company-wide list; archived deals and leads when always read)."""
        ...


@runtime_checkable
class BatchLookup(Protocol):
    """Optional: an adapter that reads many persons or items in one request (HubSpot's batch
    reads) offers these; the linker then asks once per page instead of once per address."""

    def search_persons_many(self, emails: Iterable[str]) -> dict[str, list[Person]]:
        """The persons of each address (case-insensitive), [] for an address with none."""
        ...

    def items_of_persons(self, person_ids: Iterable[int]) -> dict[int, list[Item]]:
        """The items of each person, as `CRM.items_of_person` gives them."""
        ...


@runtime_checkable
class BatchWrites(Protocol):
    """Optional: an adapter that creates many activities in one request (HubSpot's batch
    create) offers this; the outbox then sends the rows it claims together."""

    max_batch: int  # drafts one `create_activities` call sends in one request, at most

    def create_activities(self, drafts: Sequence[ActivityDraft]) -> list[str | Exception]:
        """Create these activities; for each draft, in order, its activity id or the error
        `create_activity` would have raised for it alone (a `CRMError`). A `CRMAuthError`
        is raised for the whole call."""
        ...


class CRM(Protocol):
    def search_persons(self, email: str) -> list[Person]:
        """The persons whose email equals `email` (case-insensitive), [] when none."""
        ...

    def items_of_person(self, person_id: int) -> list[Item]:
        """All leads, deals and projects of the person, open or closed, with their dates."""
        ...

    def archived_items_of_person(self, person_id: int) -> list[Item]:
        """Items the CRM keeps apart once archived (Pipedrive: archived deals and leads).

        Read only when a thread's decisions refer to an item the open lists no longer show, so
        that messages exchanged before the archiving stay linked (rule 6).
        """
        ...

    def changes_since(self, since: datetime) -> Changes:
        """Persons and items changed since `since` (polling; webhooks feed the same caches)."""
        ...

    def create_activity(self, draft: ActivityDraft) -> str:
        """Create the activity; returns its id."""
        ...

    def update_activity(self, activity_id: str, draft: ActivityDraft) -> None:
        """Rewrite the activity's links, participants and note to match `draft`."""
        ...

    def find_activity(self, key: str, person_id: int | None) -> str | None:
        """The id of the activity whose note carries `maillink-id: <key>`, if one exists."""
        ...

    def create_person(self, name: str, email: str) -> Person:
        """Create a person with this name and address (`[linking] create_persons`); returns it."""
        ...

    def users(self) -> list[CrmUser]:
        """The CRM's active users (Pipedrive users, HubSpot owners), to find each mailbox's
        owner by address; kept in memory a while by the adapter."""
        ...

    def forget_cached(self) -> None:
        """Drop what the adapter keeps in memory (lists it reads company-wide), so that the next
        reads see the CRM as it is now."""
        ...
