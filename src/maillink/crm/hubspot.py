"""HubSpot behind maillink's CRM interface (docs/crm-writes.md, "HubSpot").

Persons are contacts, found by address in bulk (`batch/read` with `idProperty=email`, 100 a
request, primary addresses only), then through the search API on `hs_additional_emails` for the
addresses no primary matched (5 a request). Items are deals and leads, reached through the v4
associations of the contacts; archived (deleted) ones are never read, so never candidates.

One email is one email engagement: its time, direction, subject and From/To/Cc headers, no
body, associated inline with its contacts, its deal or lead and the primary contact's company,
owned by the rep's HubSpot owner; `hubspot_emails` writes them and finds them again by key.
Before the first email write or lookup, the key's custom property is checked once
(`hubspot_properties`: created when missing and the token may).

Transport, retries and rate limits live in `hubspot_http`; records become `Person`s and
`Item`s in `hubspot_items`. `requests_made` counts what the adapter has cost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from maillink.crm.base import (
    ActivityDraft,
    Changes,
    CRMRefused,
)
from maillink.crm.hubspot_emails import EXISTING_ID, KEY_PROPERTY, EmailWriter
from maillink.crm.hubspot_http import (
    DEFAULT_BASE_URL,
    HubSpotHTTP,
    HubSpotNotFound,
    TokenSource,
    WriteOutcomeUnknown,
)
from maillink.crm.hubspot_items import (
    CONTACT_PROPERTIES,
    DEAL_PROPERTIES,
    LEAD_PROPERTIES,
    closed_stages,
    contact_emails,
    deal_item,
    lead_item,
    numeric_id,
    owner_user,
    person_from_contact,
)
from maillink.crm.hubspot_properties import KeyProperty, check_key_property
from maillink.crm.hubspot_reads import (
    BATCH,
    all_owners,
    associated,
    chunks,
    read_records,
    search_pages,
)
from maillink.crm.transport import Transport
from maillink.model import CrmUser, Item, Person

__all__ = ["DEFAULT_BASE_URL", "HubSpotCRM", "HubSpotNotFound", "WriteOutcomeUnknown"]

SEARCH_GROUPS = 5  # filter groups (OR) of one search request
CHANGES_OVERLAP = timedelta(minutes=1)  # polling windows overlap: the search index trails writes


class HubSpotCRM:
    """One HubSpot account, through a private app's access token or a public app's OAuth
    `tokens` (`maillink.crm.hubspot_oauth.OAuthTokens`: refreshed on demand).

    `key_property`: the custom email property holding each email's key (None: the account has
    none; the lookup then cannot find an email again and says so). `check_key_property`: read
    (and create when missing) that property once, before the first email write or lookup (the
    app's adapter does); off, it is taken to exist with unique values. `users_ttl`: how long the
    owners and the lead pipelines' stages are kept. `sleep` is where retries wait (tests).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        access_token: str = "",
        tokens: TokenSource | None = None,
        transport: Transport | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_wait: float = 30.0,
        key_property: str | None = KEY_PROPERTY,
        check_key_property: bool = False,
        users_ttl: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.http = HubSpotHTTP(
            base_url,
            access_token=access_token,
            tokens=tokens,
            transport=transport,
            timeout=timeout,
            max_retries=max_retries,
            max_wait=max_wait,
            sleep=sleep,
            now=now,
        )
        self.emails = EmailWriter(self.http, key_property)
        self.max_batch = self.emails.max_batch  # emails a batch create sends (`BatchWrites`)
        self.users_ttl = users_ttl
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._users: tuple[float, list[CrmUser]] | None = None
        self._lead_stages: tuple[float, frozenset[str]] | None = None
        self._key_lock = threading.Lock()
        self._key_checked = not (check_key_property and key_property)

    @property
    def requests_made(self) -> int:
        return self.http.requests_made

    # -- persons ------------------------------------------------------------------------------

    def search_persons(self, email: str) -> list[Person]:
        """Contacts whose primary or secondary address is `email` (case-insensitive)."""
        wanted = email.strip().lower()
        return self.search_many([wanted]).get(wanted, []) if wanted else []

    def search_persons_many(self, emails: Iterable[str]) -> dict[str, list[Person]]:
        """`search_persons` for many addresses at once (`crm.base.BatchLookup`)."""
        return self.search_many(emails)

    def search_many(self, emails: Iterable[str]) -> dict[str, list[Person]]:
        """Contacts by address for many addresses: one batch read per 100 addresses, then one
        search per 5 addresses that no primary address matched."""
        wanted = sorted({e.strip().lower() for e in emails if e.strip()})
        found: dict[str, dict[int, Person]] = {e: {} for e in wanted}
        for chunk in chunks(wanted, BATCH):
            body = {
                "idProperty": "email",
                "inputs": [{"id": e} for e in chunk],
                "properties": CONTACT_PROPERTIES,
            }
            answer = self.http.call(
                "contacts.batch_read", "POST", "/crm/v3/objects/contacts/batch/read", json=body
            )
            self._collect(answer.get("results"), found)
        secondary = [e for e in wanted if not found[e]]
        for chunk in chunks(secondary, SEARCH_GROUPS):
            groups = [
                {
                    "filters": [
                        {
                            "propertyName": "hs_additional_emails",
                            "operator": "CONTAINS_TOKEN",
                            "value": e,
                        }
                    ]
                }
                for e in chunk
            ]
            for results in search_pages(self.http, "contacts", groups, CONTACT_PROPERTIES):
                self._collect(results, found)
        return {e: list(persons.values()) for e, persons in found.items()}

    @staticmethod
    def _collect(results: Any, found: dict[str, dict[int, Person]]) -> None:
        """Matched by the addresses the contacts carry, never by position: HubSpot answers a
        batch in any order."""
        for record in results or ():
            person = person_from_contact(record)
            if person is None:
                continue
            for address in contact_emails(record.get("properties") or {}):
                if address in found:
                    found[address].setdefault(person.id, person)

    def create_person(self, name: str, email: str) -> Person:
        """POST /crm/v3/objects/contacts; a contact that already has the address is returned."""
        first, _, last = name.strip().partition(" ")
        properties = {"email": email.strip().lower(), "firstname": first, "lastname": last}
        try:
            record = self.http.call(
                "contacts.create",
                "POST",
                "/crm/v3/objects/contacts",
                json={"properties": properties},
                writes=True,
            )
        except CRMRefused as exc:
            existing = EXISTING_ID.search(exc.answer) if exc.status == 409 else None
            if existing is None:
                raise
            record = {"id": existing.group("id"), "properties": properties}
        person = person_from_contact(record)
        if person is None:
            raise WriteOutcomeUnknown("HubSpot created a contact but did not say its id")
        return Person(id=person.id, name=name or person.name, emails=person.emails)

    # -- items --------------------------------------------------------------------------------

    def items_of_person(self, person_id: int) -> list[Item]:
        """The contact's deals and leads, open or closed (archived ones are not listed)."""
        return self.items_of_persons([person_id]).get(person_id, [])

    def items_of_persons(self, person_ids: Iterable[int]) -> dict[int, list[Item]]:
        """Deals and leads of many contacts: per 100 contacts one associations read per kind,
        then one batch read per 100 deals or leads."""
        ids = sorted(set(person_ids))
        items: dict[int, list[Item]] = {pid: [] for pid in ids}
        deals = associated(self.http, "contacts", "deals", ids)
        leads = associated(self.http, "contacts", "leads", ids)
        stages = self._closed_lead_stages() if leads else frozenset()
        found = [
            deal_item(record, deals.get(int(record["id"]), ()))
            for record in read_records(self.http, "deals", sorted(deals), DEAL_PROPERTIES)
        ]
        found += [
            lead_item(record, leads.get(int(record["id"]), ()), stages)
            for record in read_records(self.http, "leads", sorted(leads), LEAD_PROPERTIES)
        ]
        for item in (i for i in found if i is not None):
            for pid in item.person_ids:
                items[pid].append(item)
        return items

    def archived_items_of_person(self, person_id: int) -> list[Item]:
        """None: HubSpot keeps closed deals and leads listed; archived means deleted."""
        return []

    def _closed_lead_stages(self) -> frozenset[str]:
        with self._lock:
            kept = self._lead_stages
            if kept is not None and self._clock() - kept[0] < self.users_ttl:
                return kept[1]
        answer = self.http.call("pipelines.leads", "GET", "/crm/v3/pipelines/leads")
        stages = closed_stages(answer)
        with self._lock:
            self._lead_stages = (self._clock(), stages)
        return stages

    # -- changes ------------------------------------------------------------------------------

    def changes_since(self, since: datetime) -> Changes:
        """Contacts whose deals or leads were modified since `since`, and the addresses of the
        contacts modified since then (search on the last-modified dates). Deletions do not
        show in search: the items cache's expiry (or webhooks) brings them."""
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        until = max(since, self._now() - CHANGES_OVERLAP)
        stamp = str(int(since.timestamp() * 1000))
        person_ids: set[int] = set()
        for type_name in ("deals", "leads"):
            group = [{"filters": [_since("hs_lastmodifieddate", stamp)]}]
            ids = [
                numeric_id(r.get("id"))
                for page in search_pages(self.http, type_name, group, ["hs_object_id"])
                for r in page
            ]
            linked = associated(self.http, type_name, "contacts", sorted(i for i in ids if i))
            person_ids.update(linked)
        emails: set[str] = set()
        group = [{"filters": [_since("lastmodifieddate", stamp)]}]
        for page in search_pages(self.http, "contacts", group, CONTACT_PROPERTIES):
            for record in page:
                emails.update(contact_emails(record.get("properties") or {}))
        return Changes(person_ids=frozenset(person_ids), emails=frozenset(emails), until=until)

    # -- emails -------------------------------------------------------------------------------

    def create_activity(self, draft: ActivityDraft) -> str:
        self._ensure_key_property()
        return self.emails.create_activity(draft)

    def create_activities(self, drafts: Sequence[ActivityDraft]) -> list[str | Exception]:
        self._ensure_key_property()
        return self.emails.create_activities(drafts)

    def find_activity(self, key: str, person_id: int | None) -> str | None:
        self._ensure_key_property()
        return self.emails.find_activity(key, person_id)

    def update_activity(self, activity_id: str, draft: ActivityDraft) -> None:
        self.emails.update_activity(activity_id, draft)

    def check_key_property(self, *, create: bool = True) -> KeyProperty | None:
        """Read the email key's custom property now (`hubspot_properties`), create it when
        missing (and `create`) if the token may, and find emails again the way it allows;
        None when the adapter keeps no key. `KeyPropertyMissing` says what to create."""
        if not self.emails.key_property:
            return None
        found = check_key_property(self.http, self.emails.key_property, create=create)
        with self._key_lock:
            self.emails.key_unique = found.unique
            self._key_checked = True
        return found

    def _ensure_key_property(self) -> None:
        """`check_key_property` once per adapter (so once per process); a failed check is
        tried again at the next email write or lookup."""
        if self._key_checked:
            return
        with self._key_lock:
            if self._key_checked:
                return
            found = check_key_property(self.http, self.emails.key_property or "")
            self.emails.key_unique = found.unique
            self._key_checked = True

    # -- owners -------------------------------------------------------------------------------

    def users(self) -> list[CrmUser]:
        """The account's active owners (GET /crm/v3/owners, every page), kept `users_ttl`."""
        with self._lock:
            if self._users is not None and self._clock() - self._users[0] < self.users_ttl:
                return list(self._users[1])
        found = [u for u in map(owner_user, all_owners(self.http)) if u is not None]
        with self._lock:
            self._users = (self._clock(), found)
        return list(found)

    def forget_cached(self) -> None:
        """Read the owners and the lead pipelines' stages again next time."""
        with self._lock:
            self._users = None
            self._lead_stages = None


def _since(name: str, stamp: str) -> dict[str, str]:
    return {"propertyName": name, "operator": "GTE", "value": stamp}
