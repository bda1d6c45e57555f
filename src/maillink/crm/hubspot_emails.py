"""HubSpot's email engagements: one email, one engagement, written and found again by key.

An email's key is kept in the account's custom email property `maillink_key`, checked once per
process and created when missing (`hubspot_properties`), with unique values where HubSpot allows
them. How an email is found again after an unknown outcome depends on what the Properties API
reports for it:
- unique values: `batch/read` with `idProperty=maillink_key`. It reads HubSpot's records
  themselves, not the search index (which trails writes by seconds), so an email written a
  moment ago is found; and a second create with the same key is refused by HubSpot (409 naming
  the existing id) rather than duplicated, so even a lookup that raced the first write cannot
  make two engagements.
- values not unique (HubSpot cannot read by such a property): the engagement was created with
  inline associations to its contacts, so the primary contact's emails are listed through the
  v4 associations (`POST /crm/v4/associations/contacts/emails/batch/read`) and their keys read
  by id (`batch/read`): both read-after-write, not the search index. This costs one request per
  500 of the contact's emails and per 100 emails read, and runs only after an unknown outcome.
  Without the unique constraint, what keeps this from duplicating is the outbox: it claims a
  key (a compare-and-set on the row's attempt count, in its own commit) before any create, so
  two processes never both create one key, and a row whose create may have been sent is looked
  up before it is created again. What is left: a create HubSpot applies only after the lookup
  ran (a lost answer to a request still in flight, longer than the outbox's retry delay); an
  email whose association with its primary contact is gone before the lookup (the contact
  merged or deleted, or the link removed by hand); a batch answer (207) that leaves out an email
  HubSpot did create, which is sent again. Each can make a second engagement where the unique
  property would have made a 409.
Later decisions change the engagement's associations (v4 batch create / archive), not the
email.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from maillink.crm.base import (
    ActivityDraft,
    CRMActivityGone,
    CRMAuthError,
    CRMError,
    CRMRecordGone,
    CRMRefused,
)
from maillink.crm.hubspot_http import HubSpotHTTP, WriteOutcomeUnknown
from maillink.crm.hubspot_items import (
    EMAIL_TO,
    association_type,
    email_input,
    email_targets,
    numeric_id,
)
from maillink.crm.hubspot_reads import BATCH, associated, chunks, read_records

KEY_PROPERTY = "maillink_key"
# How HubSpot names a record an association refers to that it does not have:
# "One or more associations are invalid: deals 12 does not exist", "… of 1001-12 does not exist".
_GONE = re.compile(r"\b(?P<type>contacts|deals|leads|companies)\s+(?P<id>\d+)\s+does not exist")
_KINDS = {"contacts": "person", "deals": "deal", "leads": "lead", "companies": "organization"}
# The id HubSpot names when it refuses a duplicate of a unique value (409).
EXISTING_ID = re.compile(r"Existing ID:\s*(?P<id>\d+)")


class EmailWriter:
    """Creates, finds and re-associates the email engagements of one HubSpot account.

    `key_property`: the custom email property holding each email's key (None: the account has
    none; the lookup then cannot find an email again and says so)."""

    def __init__(self, http: HubSpotHTTP, key_property: str | None = KEY_PROPERTY):
        self.http = http
        self.key_property = key_property
        self.key_unique = True  # HubSpot keeps the key's values unique (`hubspot_properties`)
        self.max_batch = BATCH  # emails a batch create sends (`crm.base.BatchWrites`)

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
            found = self.find_activity(draft.key, draft.person_ids[0] if draft.person_ids else None)
            if found is None:
                raise
            return found
        except CRMRefused as exc:
            existing = EXISTING_ID.search(exc.answer) if exc.status == 409 else None
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
        makes a second create of a created email a 409 naming it, never a duplicate). A batch
        refused for a record gone since the decision (a deal archived, a contact merged away)
        is that refusal for every draft naming the record, and the others are sent again. An
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
                found = self._find_many(drafts)
            except CRMAuthError:
                raise
            except CRMError:  # not known yet: the outbox looks them up again before a create
                found = {}
            for draft in drafts:
                outcomes[draft.key] = found.get(draft.key) or unknown
            return
        except CRMRefused as exc:
            gone = _gone(exc)
            naming = _naming(gone, drafts)
            if naming:  # the refusal names a gone record: it is these drafts' outcome
                for draft in naming:
                    outcomes[draft.key] = gone
                self._create_batch([d for d in drafts if d not in naming], outcomes)
                return
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

    def _find_many(self, drafts: Sequence[ActivityDraft]) -> dict[str, str]:
        """The emails of these drafts that HubSpot has, by key: batch read by the property when
        its values are unique, else through the drafts' primary contacts."""
        keys = [d.key for d in drafts]
        if not self.key_unique:
            primaries = {d.person_ids[0] for d in drafts if d.person_ids}
            return self._find_through_contacts(set(keys), sorted(primaries))
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
        """The email engagement whose `maillink_key` is `key`, None when there is none: batch
        read by the unique property, or (values not unique) among the emails associated with
        the contact `person_id` (None: not looked for). Both read-after-write, unlike search."""
        if not self.key_property:
            return None
        if not self.key_unique:
            if person_id is None:
                return None
            return self._find_through_contacts({key}, [person_id]).get(key)
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

    def _find_through_contacts(self, keys: set[str], person_ids: list[int]) -> dict[str, str]:
        """The emails of these keys among those associated with the contacts (v4 batch read
        of the associations, then batch reads of those emails' keys by id); of several emails
        with one key, the lowest id, the same one every time."""
        emails = associated(self.http, "contacts", "emails", person_ids)
        found: dict[str, int] = {}
        for record in read_records(self.http, "emails", sorted(emails), [self.key_property or ""]):
            key = (record.get("properties") or {}).get(self.key_property or "")
            email_id = numeric_id(record.get("id"))
            if key in keys and email_id is not None:
                found[key] = min(found.get(key, email_id), email_id)
        return {key: str(email_id) for key, email_id in found.items()}

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


def _naming(gone: CRMRefused, drafts: list[ActivityDraft]) -> list[ActivityDraft]:
    """The drafts associated with the record a gone refusal names (none for another refusal):
    a batch HubSpot refused whole for a deleted deal or contact is refused for those drafts
    alone, without sending each of them again to learn it."""
    if not isinstance(gone, CRMRecordGone) or gone.record_id is None:
        return []
    types = {kind: type_name for type_name, kind in _KINDS.items()}
    target = (types.get(gone.kind or ""), numeric_id(gone.record_id))
    return [d for d in drafts if target in email_targets(d)]


def _gone(exc: CRMRefused) -> CRMRefused:
    """A refusal naming a record the write refers to that HubSpot does not have (deleted since
    the decision) as `CRMRecordGone`; other refusals as they are."""
    found = _GONE.search(exc.answer) if exc.status in (400, 404) else None
    if found is None:
        return exc
    kind = _KINDS[found.group("type")]
    return CRMRecordGone(str(exc), exc.status, exc.answer, kind, found.group("id"))
