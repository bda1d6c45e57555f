"""HubSpot behind maillink's CRM interface (docs/crm-writes.md, "HubSpot").

Persons are contacts, found by address in bulk (`batch/read` with `idProperty=email`, 100 a
request, primary addresses only), then through the search API on `hs_additional_emails` for the
addresses no primary matched (5 a request). Items are deals and leads, reached through the v4
associations of the contacts; archived (deleted) ones are never read, so never candidates.

One email is one email engagement: its time, direction, subject and From/To/Cc headers, no
body, associated inline with its contacts, its deal or lead and the primary contact's company,
owned by the rep's HubSpot owner. Its key is kept in the account's custom email property
`maillink_key`, created with unique values. That makes the lookup after an unknown outcome
safe: `batch/read` with `idProperty=maillink_key` reads HubSpot's records themselves, not the
search index (which trails writes by seconds), so an email written a moment ago is found; and
a second create with the same key is refused by HubSpot (409 naming the existing id) rather than
duplicated, so even a lookup that raced the first write cannot make two engagements.
Later decisions change the engagement's associations (v4 batch create / archive), not the email.

Transport, retries and rate limits live in `hubspot_http`; records become `Person`s and
`Item`s in `hubspot_items`. `requests_made` counts what the adapter has cost.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from maillink.crm.base import (
    ActivityDraft,
    Changes,
    CRMActivityGone,
    CRMAuthError,
    CRMError,
    CRMRecordGone,
    CRMRefused,
)
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
    EMAIL_TO,
    LEAD_PROPERTIES,
    association_type,
    closed_stages,
    contact_emails,
    deal_item,
    email_input,
    email_targets,
    lead_item,
    numeric_id,
    owner_user,
    person_from_contact,
)
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

KEY_PROPERTY = "maillink_key"
SEARCH_GROUPS = 5  # filter groups (OR) of one search request
CHANGES_OVERLAP = timedelta(minutes=1)  # polling windows overlap: the search index trails writes
# How HubSpot names a record an association refers to that it does not have:
# "One or more associations are invalid: deals 12 does not exist", "… of 1001-12 does not exist".
_GONE = re.compile(r"\b(?P<type>contacts|deals|leads|companies)\s+(?P<id>\d+)\s+does not exist")
_KINDS = {"contacts": "person", "deals": "deal", "leads": "lead", "companies": "organization"}
_EXISTING = re.compile(r"Existing ID:\s*(?P<id>\d+)")


class HubSpotCRM:
    """One HubSpot account, through a private app's access token or a public app's OAuth
    `tokens` (`maillink.crm.hubspot_oauth.OAuthTokens`: refreshed on demand).

    `key_property`: the custom email property holding each email's key (None: the account has
    none; the lookup then cannot find an email again and says so). `users_ttl`: how long the
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
        self.key_property = key_property
        self.max_batch = BATCH  # emails a batch create sends (`crm.base.BatchWrites`)
        self.users_ttl = users_ttl
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._users: tuple[float, list[CrmUser]] | None = None
        self._lead_stages: tuple[float, frozenset[str]] | None = None

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
            existing = _EXISTING.search(exc.answer) if exc.status == 409 else None
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
        """One email engagement, associated inline; returns its id. An answer lost on the way
        is looked up by key at once; a key HubSpot already has (409) is that email."""
        body = {"inputs": [email_input(draft, self.key_property)]}
        try:
            answer = self.http.call(
                "emails.batch_create",
                "POST",
                "/crm/v3/objects/emails/batch/create",
                json=body,
                writes=True,
            )
        except WriteOutcomeUnknown:
            found = self.find_activity(draft.key, None)
            if found is None:
                raise
            return found
        except CRMRefused as exc:
            existing = _EXISTING.search(exc.answer) if exc.status == 409 else None
            if existing is not None and self.key_property:
                return existing.group("id")
            raise _gone(exc) from exc
        results = answer.get("results") or []
        if not results or numeric_id(results[0].get("id")) is None:
            raise WriteOutcomeUnknown("HubSpot created an email but did not say its id")
        return str(results[0]["id"])

    def create_activities(self, drafts: Sequence[ActivityDraft]) -> list[str | Exception]:
        """Many email engagements, `max_batch` a request (`crm.base.BatchWrites`): for each
        draft, in order, its id or the error it alone met. Results are matched by key, never
        by position. A batch HubSpot refuses whole (its batch create is all or nothing) is
        split in halves until the refused drafts stand alone, so one bad draft costs the others
        nothing; a 207 answer's missing drafts are sent again the same way (the unique key
        makes a second create of a created email a 409 naming it, never a duplicate). An
        answer lost on the way is looked up by key, all the batch in one read."""
        outcomes: dict[str, str | Exception] = {}
        for start in range(0, len(drafts), self.max_batch):
            self._create_batch(list(drafts[start : start + self.max_batch]), outcomes)
        return [outcomes[d.key] for d in drafts]

    def _create_batch(
        self, drafts: list[ActivityDraft], outcomes: dict[str, str | Exception]
    ) -> None:
        if len(drafts) == 1 or not self.key_property:
            for draft in drafts:  # alone: create_activity's own answers (409, gone records)
                try:
                    outcomes[draft.key] = self.create_activity(draft)
                except CRMAuthError:
                    raise
                except CRMError as exc:
                    outcomes[draft.key] = exc
            return
        body = {"inputs": [email_input(d, self.key_property) for d in drafts]}
        try:
            answer = self.http.call(
                "emails.batch_create",
                "POST",
                "/crm/v3/objects/emails/batch/create",
                json=body,
                writes=True,
            )
        except WriteOutcomeUnknown as unknown:
            try:
                found = self._find_many([d.key for d in drafts])
            except CRMAuthError:
                raise
            except CRMError:  # not known yet: the outbox looks them up again before a create
                found = {}
            for draft in drafts:
                outcomes[draft.key] = found.get(draft.key) or unknown
            return
        except CRMRefused:
            half = len(drafts) // 2
            self._create_batch(drafts[:half], outcomes)
            self._create_batch(drafts[half:], outcomes)
            return
        except CRMAuthError:
            raise
        except CRMError as exc:  # not carried out (a rate limit): the same for every draft
            for draft in drafts:
                outcomes[draft.key] = exc
            return
        created = self._by_key(answer.get("results"))
        refused = _refusals(answer.get("errors"), [d.key for d in drafts])
        again = []
        for draft in drafts:
            if draft.key in created:
                outcomes[draft.key] = created[draft.key]
            elif draft.key in refused:
                outcomes[draft.key] = _gone(refused[draft.key])
            else:
                again.append(draft)
        if again and len(again) < len(drafts):
            self._create_batch(again, outcomes)
        for draft in again:  # nothing said about them at all: as a lost answer
            outcomes.setdefault(
                draft.key, WriteOutcomeUnknown("HubSpot's batch answer left this email out")
            )

    def _by_key(self, results: Any) -> dict[str, str]:
        """Created or read emails by their key (HubSpot answers a batch in any order)."""
        found: dict[str, str] = {}
        for record in results or ():
            key = (record.get("properties") or {}).get(self.key_property or "")
            if isinstance(key, str) and numeric_id(record.get("id")) is not None:
                found[key] = str(record["id"])
        return found

    def _find_many(self, keys: list[str]) -> dict[str, str]:
        """The emails of these keys that HubSpot has (batch read by the unique property)."""
        found: dict[str, str] = {}
        for chunk in chunks(keys, BATCH):
            body = {
                "idProperty": self.key_property,
                "inputs": [{"id": k} for k in chunk],
                "properties": [self.key_property],
            }
            answer = self.http.call(
                "emails.batch_read", "POST", "/crm/v3/objects/emails/batch/read", json=body
            )
            found.update(self._by_key(answer.get("results")))
        return found

    def find_activity(self, key: str, person_id: int | None) -> str | None:
        """The email engagement whose `maillink_key` is `key` (batch read by the unique
        property: read-after-write, unlike search), None when there is none."""
        if not self.key_property:
            return None
        body = {
            "idProperty": self.key_property,
            "inputs": [{"id": key}],
            "properties": [self.key_property],
        }
        answer = self.http.call(
            "emails.batch_read", "POST", "/crm/v3/objects/emails/batch/read", json=body
        )
        for record in answer.get("results") or ():
            if (record.get("properties") or {}).get(self.key_property) == key:
                return str(record["id"])
        return None

    def update_activity(self, activity_id: str, draft: ActivityDraft) -> None:
        """Make the email's associations those of `draft` (new ones first, then the old ones
        removed); the email itself is left as it is."""
        email_id = numeric_id(activity_id)
        if email_id is None or not list(
            read_records(self.http, "emails", [email_id], ["hs_timestamp"])
        ):
            raise CRMActivityGone(f"HubSpot has no email {activity_id}", 404)
        wanted: dict[str, set[int]] = {t: set() for t in EMAIL_TO}
        for to_type, to_id in email_targets(draft):
            wanted[to_type].add(to_id)
        for to_type in EMAIL_TO:
            have = set(associated(self.http, "emails", to_type, [email_id]))
            self._associate(email_id, to_type, sorted(wanted[to_type] - have))
            extra = sorted(have - wanted[to_type])
            if extra:
                drop = {
                    "inputs": [
                        {"from": {"id": str(email_id)}, "to": [{"id": str(i)} for i in extra]}
                    ]
                }
                self.http.call(
                    f"associations.emails.{to_type}.archive",
                    "POST",
                    f"/crm/v4/associations/emails/{to_type}/batch/archive",
                    json=drop,
                    writes=True,
                )

    def _associate(self, email_id: int, to_type: str, ids: list[int]) -> None:
        if not ids:
            return
        spec = [association_type(to_type)]
        body = {
            "inputs": [
                {"from": {"id": str(email_id)}, "to": {"id": str(i)}, "types": spec} for i in ids
            ]
        }
        try:
            answer = self.http.call(
                f"associations.emails.{to_type}.create",
                "POST",
                f"/crm/v4/associations/emails/{to_type}/batch/create",
                json=body,
                writes=True,
            )
        except CRMRefused as exc:
            raise _gone(exc) from exc
        for error in answer.get("errors") or ():  # 207: a record is gone since the decision
            if error.get("category") == "OBJECT_NOT_FOUND":
                pair = str(((error.get("context") or {}).get("ids") or ["-"])[0])
                gone_id = pair.rpartition("-")[2] or None
                raise CRMRecordGone(
                    f"HubSpot has no {to_type} {gone_id} to associate email {email_id} with",
                    404,
                    str(error.get("message") or ""),
                    _KINDS[to_type],
                    gone_id,
                )

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


def _refusals(errors: Any, keys: list[str]) -> dict[str, CRMRefused]:
    """The drafts a 207 answer's errors name (by key, in their context or message), each with
    its refusal; errors naming none are left out (their drafts are sent again)."""
    refused: dict[str, CRMRefused] = {}
    for error in errors or ():
        text = json.dumps(error.get("context") or {}) + " " + str(error.get("message") or "")
        message = f"HubSpot refused the email: {error.get('message') or error.get('category')}"
        for key in keys:
            if key in text:
                refused[key] = CRMRefused(message, 400, str(error.get("message") or ""))
    return refused


def _since(name: str, stamp: str) -> dict[str, str]:
    return {"propertyName": name, "operator": "GTE", "value": stamp}


def _gone(exc: CRMRefused) -> CRMRefused:
    """A refusal naming a record the write refers to that HubSpot does not have (deleted since
    the decision) as `CRMRecordGone`; other refusals as they are."""
    found = _GONE.search(exc.answer) if exc.status in (400, 404) else None
    if found is None:
        return exc
    kind = _KINDS[found.group("type")]
    return CRMRecordGone(str(exc), exc.status, exc.answer, kind, found.group("id"))
