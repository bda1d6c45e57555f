"""Pipedrive behind maillink's CRM interface (docs/crm-writes.md).

API v2 where Pipedrive has it (persons search, persons, deals, activities), v1 where it has only v1
(leads, projects, activity types). Transport, retries and paging live in `pipedrive_http`; how
records become `Person`s and `Item`s in `pipedrive_items`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from maillink.crm.base import (
    ActivityDraft,
    Changes,
    CRMActivityGone,
    CRMError,
    CRMRecordGone,
    CRMRefused,
    Listing,
)
from maillink.crm.pipedrive_http import (
    TOKEN_COSTS,
    PipedriveHTTP,
    PipedriveNotFound,
    WriteOutcomeUnknown,
)
from maillink.crm.pipedrive_items import (
    deal_item,
    lead_item,
    note_has_key,
    person_emails,
    person_from_list,
    person_from_search,
    project_item,
    rfc3339,
    user_from_list,
)
from maillink.model import CrmUser, Item, ItemKind, Person

log = logging.getLogger(__name__)

EMAIL_TYPE = "email"  # key_string of Pipedrive's default email activity type
DEAL_STATUSES = "open,won,lost,deleted"  # deleted ones: those deleted in the last 30 days
PROJECT_STATUSES = "open,completed,canceled,deleted"
CHANGES_OVERLAP = timedelta(minutes=1)  # polling windows overlap: clocks differ a little
_LINK_FIELDS = {ItemKind.DEAL: "deal_id", ItemKind.LEAD: "lead_id", ItemKind.PROJECT: "project_id"}
# How Pipedrive says that a record an activity names is gone: "Deal with id 12 not found",
# "Person not found", "deal_id 12 does not exist"…
_GONE = re.compile(
    r"\b(?P<kind>deal|lead|project|person)(?:_id)?\b(?:\s+with\s+id)?\s*(?P<id>[\w-]*)\s+"
    r"(?:was\s+|is\s+)?(?:not\s+found|does\s+not\s+exist|deleted|merged|archived)",
    re.IGNORECASE,
)

__all__ = ["TOKEN_COSTS", "PipedriveCRM", "PipedriveNotFound", "WriteOutcomeUnknown"]


class PipedriveCRM:
    """One Pipedrive company, through its API token or an OAuth access token.

    `projects_ttl`: projects can only be listed company-wide, so the list is kept that long and
    serves every person. `users_ttl`: how long the company's users (the owners of activities)
    are kept. `include_archived`: always read archived deals and leads too (they matter for
    messages exchanged before the archiving, at 20 + 40 tokens a person). `find_pages` bounds how
    many pages of a person's newest activities `find_activity` reads.
    `tokens_spent` and `requests_made` count what this adapter has cost.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_token: str | None = None,
        oauth_token: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        projects_ttl: float = 300.0,
        users_ttl: float = 3600.0,
        include_archived: bool = False,
        find_pages: int = 5,
        find_page_size: int = 100,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.http = PipedriveHTTP(
            base_url,
            api_token=api_token,
            oauth_token=oauth_token,
            session=session,
            timeout=timeout,
            max_retries=max_retries,
            max_wait=max_wait,
        )
        self.projects_ttl = projects_ttl
        self.users_ttl = users_ttl
        self.include_archived = include_archived
        self.find_pages = find_pages
        self.find_page_size = find_page_size
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._activity_type: str | None = None
        self._projects: tuple[float, dict[int, list[Item]]] | None = None
        self._users: tuple[float, list[CrmUser]] | None = None

    @property
    def tokens_spent(self) -> int:
        return self.http.tokens_spent

    @property
    def requests_made(self) -> int:
        return self.http.requests_made

    # -- persons and items -------------------------------------------------------------------

    def search_persons(self, email: str) -> list[Person]:
        """Persons with this exact address (case-insensitive): v2 exact search, then checked."""
        wanted = email.strip().lower()
        if not wanted:
            return []
        params = {"term": wanted, "fields": "email", "exact_match": "true", "limit": 100}
        found: dict[int, Person] = {}
        for data in self.http.pages(
            "persons.search", "/api/v2/persons/search", params, max_pages=5
        ):
            for result in (data or {}).get("items") or ():
                person = person_from_search(result)
                if person and any(e.strip().lower() == wanted for e in person.emails):
                    found.setdefault(person.id, person)
        return list(found.values())

    def items_of_person(self, person_id: int) -> list[Item]:
        """The person's deals (open, won, lost, deleted in the last 30 days), leads and projects,
        archived ones included when `include_archived`."""
        deals = {"person_id": person_id, "status": DEAL_STATUSES, "limit": 500}
        leads = {"person_id": person_id, "limit": 500}
        records: list[Item | None] = []
        records += map(deal_item, self._all("deals.list", "/api/v2/deals", deals))
        records += map(lead_item, self._all("leads.list", "/api/v1/leads", leads))
        if self.include_archived:
            records += self._archived(person_id)
        records += self._projects_by_person().get(person_id, [])
        return _unique(records)

    def archived_items_of_person(self, person_id: int) -> list[Item]:
        """The person's archived deals and leads (20 + 40 tokens): read only when a decision
        refers to an item that the open lists no longer show."""
        return _unique(self._archived(person_id))

    def _archived(self, person_id: int) -> list[Item | None]:
        deals = {"person_id": person_id, "status": DEAL_STATUSES, "limit": 500}
        leads = {"person_id": person_id, "limit": 500}
        records: list[Item | None] = []
        records += map(deal_item, self._all("deals.archived", "/api/v2/deals/archived", deals))
        records += map(lead_item, self._all("leads.archived", "/api/v1/leads/archived", leads))
        return records

    def changes_since(self, since: datetime) -> Changes:
        """Persons whose deals changed, and addresses of changed persons, since `since` (v2
        `updated_since`; leads and projects have none: their caches expire instead)."""
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        until = max(since, self._now() - CHANGES_OVERLAP)
        stamp = rfc3339(since)
        deals = {"updated_since": stamp, "status": DEAL_STATUSES, "limit": 500}
        changed_deals = list(self._all("deals.list", "/api/v2/deals", deals))
        if self.include_archived:
            changed_deals += self._all("deals.archived", "/api/v2/deals/archived", deals)
        person_ids = {
            int(d["person_id"]) for d in changed_deals if isinstance(d.get("person_id"), int)
        }
        persons = {"updated_since": stamp, "limit": 500}
        emails = {
            e
            for p in self._all("persons.list", "/api/v2/persons", persons)
            for e in person_emails(p)
        }
        return Changes(
            person_ids=frozenset(person_ids),
            emails=frozenset(emails),
            until=until,
        )

    # -- listings, for the mirror (`maillink.crm.mirror`) -------------------------------------

    def list_records(self, since: datetime | None, limit: int) -> Listing:
        """Persons (v2, `updated_since`), deals (v2, `updated_since`, deleted ones of the last 30
        days as DELETED) and every not archived lead (v1 has no `updated_since`, and archived,
        converted or deleted leads leave the list: it is read whole each time). Since a time,
        archived deals changed since then are `gone`. 500 a page; stops once more than `limit`
        records were listed (the listing is then not `complete`)."""
        stamp = {"updated_since": rfc3339(since)} if since is not None else {}
        counted = 0
        persons: list[Person] = []
        items: list[Item] = []
        gone: list[Item] = []
        sources: list[tuple[str, str, dict[str, Any], Callable[[dict[str, Any]], Any], list[Any]]]
        sources = [
            ("persons.list", "/api/v2/persons", {**stamp}, person_from_list, persons),
            ("deals.list", "/api/v2/deals", {**stamp, "status": DEAL_STATUSES}, deal_item, items),
            ("leads.list", "/api/v1/leads", {}, lead_item, items),
        ]
        if since is not None:
            archived = {**stamp, "status": DEAL_STATUSES}
            sources.append(("deals.archived", "/api/v2/deals/archived", archived, deal_item, gone))
        for operation, path, params, convert, into in sources:
            for record in self._all(operation, path, {**params, "limit": 500}):
                counted += 1
                if counted > limit:
                    return Listing(since=since, complete=False, records=counted)
                converted = convert(record)
                if converted is not None:
                    into.append(converted)
        return Listing(
            since=since,
            persons=tuple(persons),
            items=tuple(items),
            gone=tuple(gone),
            whole=frozenset({ItemKind.LEAD}),
            records=counted,
        )

    def unmirrored_items(self, person_id: int) -> list[Item]:
        """The person's projects (the company-wide list, kept `projects_ttl`), and archived deals
        and leads when `include_archived`: what `list_records` leaves out."""
        records: list[Item | None] = []
        if self.include_archived:
            records += self._archived(person_id)
        records += self._projects_by_person().get(person_id, [])
        return _unique(records)

    def _all(self, operation: str, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for data in self.http.pages(operation, path, params):
            yield from (record for record in data or () if isinstance(record, dict))

    def _projects_by_person(self) -> dict[int, list[Item]]:
        with self._lock:
            if self._projects is not None and self._clock() - self._projects[0] < self.projects_ttl:
                return self._projects[1]
            params = {"status": PROJECT_STATUSES, "include_archived": "true", "limit": 500}
            by_person: dict[int, list[Item]] = {}
            for record in self._all("projects.list", "/api/v1/projects", params):
                item = project_item(record)
                if item is None:
                    continue
                for pid in item.person_ids:
                    by_person.setdefault(pid, []).append(item)
            self._projects = (self._clock(), by_person)
            return by_person

    # -- activities --------------------------------------------------------------------------

    def activity_type(self) -> str:
        """The key_string of the company's email activity type (looked up once)."""
        with self._lock:
            if self._activity_type is None:
                envelope = self.http.call("activityTypes.list", "GET", "/api/v1/activityTypes")
                self._activity_type = _email_type(envelope.get("data") or [])
            return self._activity_type

    def create_person(self, name: str, email: str) -> Person:
        """POST /api/v2/persons with the name and the (primary) address."""
        body = {"name": name, "emails": [{"value": email, "primary": True}]}
        envelope = self.http.call("persons.create", "POST", "/api/v2/persons", json=body)
        data = envelope.get("data") or {}
        if not isinstance(data.get("id"), int):
            raise WriteOutcomeUnknown("Pipedrive created a person but did not say its id")
        emails = tuple(person_emails(data)) or (email,)
        return Person(id=data["id"], name=str(data.get("name") or name), emails=emails)

    def create_activity(self, draft: ActivityDraft) -> str:
        body = self._activity_body(draft, clear_links=False)
        with _gone_records():
            envelope = self.http.call("activities.create", "POST", "/api/v2/activities", json=body)
        activity_id = (envelope.get("data") or {}).get("id")
        if activity_id is None:
            raise WriteOutcomeUnknown("Pipedrive created an activity but did not say its id")
        return str(activity_id)

    def update_activity(self, activity_id: str, draft: ActivityDraft) -> None:
        """Rewrite the activity; the link fields of the kinds not in the draft are set to null."""
        body = self._activity_body(draft, clear_links=True)
        path = f"/api/v2/activities/{int(activity_id)}"
        try:
            with _gone_records():
                self.http.call("activities.update", "PATCH", path, json=body)
        except PipedriveNotFound as exc:  # the activity itself (the records it names: 400)
            raise CRMActivityGone(str(exc), exc.status, exc.answer) from exc

    def users(self) -> list[CrmUser]:
        """The company's active users (GET /api/v1/users, 20 tokens, one page: v1 does not page
        it), kept `users_ttl`."""
        with self._lock:
            if self._users is not None and self._clock() - self._users[0] < self.users_ttl:
                return list(self._users[1])
            envelope = self.http.call("users.list", "GET", "/api/v1/users")
            records = envelope.get("data") or []
            found = [user_from_list(r) for r in records if isinstance(r, dict)]
            self._users = (self._clock(), [u for u in found if u is not None])
            return list(self._users[1])

    def forget_cached(self) -> None:
        """Read the company's projects, users and email activity type again next time."""
        with self._lock:
            self._projects = None
            self._users = None
            self._activity_type = None

    def find_activity(self, key: str, person_id: int | None) -> str | None:
        """The activity whose note has `maillink-id: <key>`: among the primary person's newest
        activities (or the company's, without a person), at most `find_pages` pages."""
        params: dict[str, Any] = {
            "sort_by": "add_time",
            "sort_direction": "desc",
            "limit": self.find_page_size,
        }
        if person_id is not None:
            params["person_id"] = person_id
        pages = self.http.pages(
            "activities.list", "/api/v2/activities", params, max_pages=self.find_pages
        )
        for data in pages:
            for activity in data or ():
                if isinstance(activity, dict) and note_has_key(activity.get("note"), key):
                    return str(activity["id"])
        return None

    def _activity_body(self, draft: ActivityDraft, *, clear_links: bool) -> dict[str, Any]:
        when = draft.when if draft.when.tzinfo else draft.when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
        body: dict[str, Any] = {
            "subject": draft.subject,
            "type": self.activity_type(),
            "done": True,
            "due_date": when.strftime("%Y-%m-%d"),
            "due_time": when.strftime("%H:%M"),
            "note": draft.note,
        }
        # v2 names the activity's user `owner_id` (v1's `user_id`); absent: the token's user.
        if draft.owner_id is not None and draft.owner_id.isdigit():
            body["owner_id"] = int(draft.owner_id)
        if draft.organization_id is not None and draft.organization_id.isdigit():
            body["org_id"] = int(draft.organization_id)
        person_ids = list(dict.fromkeys(draft.person_ids))
        if person_ids:
            body["person_id"] = person_ids[0]
            body["participants"] = [
                {"person_id": pid, "primary": i == 0} for i, pid in enumerate(person_ids)
            ]
        links: dict[str, int | str | None] = dict.fromkeys(_LINK_FIELDS.values())
        for ref in draft.items:
            name = _LINK_FIELDS[ref.kind]
            if links[name] is None:
                links[name] = ref.id if ref.kind is ItemKind.LEAD else int(ref.id)
        body.update(links if clear_links else {k: v for k, v in links.items() if v is not None})
        return body


@contextlib.contextmanager
def _gone_records() -> Iterator[None]:
    """A write refused because a person, deal, lead or project it names is gone becomes
    `CRMRecordGone`; other refusals pass as they are."""
    try:
        yield
    except CRMRecordGone:
        raise
    except CRMRefused as exc:
        if exc.status not in (400, 404, 410, 422):
            raise
        found = _GONE.search(exc.answer)
        if found is None:
            raise
        kind = found.group("kind").lower()
        ident = found.group("id") or None
        raise CRMRecordGone(str(exc), exc.status, exc.answer, kind, ident) from exc


def _unique(records: list[Item | None]) -> list[Item]:
    items: dict[str, Item] = {}
    for item in records:
        if item is not None:
            items.setdefault(str(item.ref), item)
    return list(items.values())


def _email_type(types: list[dict[str, Any]]) -> str:
    active = [t for t in types if isinstance(t, dict) and t.get("active_flag", True)]
    for activity_type in active:
        if activity_type.get("key_string") == EMAIL_TYPE:
            return EMAIL_TYPE
    for activity_type in active:
        if activity_type.get("icon_key") == EMAIL_TYPE and activity_type.get("key_string"):
            return str(activity_type["key_string"])
    raise CRMError(
        "Pipedrive has no active email activity type (key_string 'email'): "
        "reactivate it under Company settings > Activities"
    )
