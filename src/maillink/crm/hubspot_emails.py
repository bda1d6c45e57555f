"""HubSpot's email engagements: one email, one engagement, written and found again by key.

An email's key is kept in the account's custom email property `maillink_key`, created with
unique values. That makes the lookup after an unknown outcome safe: `batch/read` with
`idProperty=maillink_key` reads HubSpot's records themselves, not the search index (which trails
writes by seconds), so an email written a moment ago is found; and a second create with the same
key is refused by HubSpot (409 naming the existing id) rather than duplicated, so even a lookup
that raced the first write cannot make two engagements. Later decisions change the engagement's
associations (v4 batch create / archive), not the email.
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
            found = self.find_activity(draft.key, None)
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


def _gone(exc: CRMRefused) -> CRMRefused:
    """A refusal naming a record the write refers to that HubSpot does not have (deleted since
    the decision) as `CRMRecordGone`; other refusals as they are."""
    found = _GONE.search(exc.answer) if exc.status in (400, 404) else None
    if found is None:
        return exc
    kind = _KINDS[found.group("type")]
    return CRMRecordGone(str(exc), exc.status, exc.answer, kind, found.group("id"))
