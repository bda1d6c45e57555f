"""Helpers of the end-to-end tests (constants, connecting a mailbox, acting as the browser, and
one CRM-neutral view of what either CRM sandbox holds)."""

from __future__ import annotations

import html
import json
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from maillink.app import App
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox

DOMAIN = "acme.example"
REP = f"alice@{DOMAIN}"
NOW = datetime.now(UTC).replace(microsecond=0)
GMAIL_SCOPE = "https://www.googleapis.com/auth/gmail.metadata"


def connect(app: App, google: GoogleSandbox, email: str = REP) -> None:
    """A mailbox stored as `maillink connect gmail` stores it, with a real refresh token."""
    from maillink.store import accounts

    token = google.issue_refresh_token(email)
    secret = app.cipher.encrypt(json.dumps({"refresh_token": token, "scopes": [GMAIL_SCOPE]}))
    with app.store.transaction() as conn:
        accounts.upsert(conn, email, "gmail", secret, GMAIL_SCOPE)


def follow_printed_url(process: subprocess.Popen[str]) -> str:
    """Act as the browser: read the authorization URL the command printed and follow it."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("http"):
            url = line.strip()
            threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 30}).start()
            return url
    raise AssertionError("no authorization URL was printed")


# -- one view of both CRMs ----------------------------------------------------------------------

CRMS = ("pipedrive", "hubspot")
both_crms = pytest.mark.parametrize("crm", CRMS, indirect=True)  # the `crm` fixture, both ways
_KEY_LINE = "maillink-id: "
_PIPEDRIVE_CREATES = r"^/api/v2/activities$"  # POST: one email, one activity
_HUBSPOT_CREATES = r"^/crm/v3/objects/emails(/batch/create)?$"  # POST: engagements
# HubSpot requests that change an engagement it has: its properties, or its associations.
_HUBSPOT_EMAIL_CHANGES = re.compile(
    r"^/crm/v4/associations/emails/|^/crm/v3/objects/emails/(?!batch/(create|read)$)"
)


@dataclass(frozen=True)
class Logged:
    """One email as the CRM holds it: a Pipedrive activity or a HubSpot email engagement.

    `items` are the item references it is linked to ("deal:12", "lead:…"), `persons` its
    persons (contacts), `organization` the organization (company) it is linked to."""

    id: str
    key: str
    subject: str
    persons: frozenset[int]
    items: frozenset[str]
    organization: str | None
    owner: str | None

    def item(self, kind: str) -> str | None:
        """The id of the item of that kind ("deal", "lead", "project") it is linked to."""
        found = [ref.partition(":")[2] for ref in self.items if ref.startswith(kind + ":")]
        return found[0] if found else None


@dataclass
class CrmSandbox:
    """The running sandbox of one CRM, seeded and read back the same way for both.

    Seeding goes straight to the sandbox (`add_person`, `add_deal`, `add_lead`,
    `set_deal_status` have the same names and arguments in both); reading back goes through
    `emails()`, which hides how each CRM stores an email and its links."""

    kind: str
    sandbox: Any  # PipedriveSandbox | HubSpotSandbox

    @classmethod
    def of(cls, sandbox: PipedriveSandbox | HubSpotSandbox) -> CrmSandbox:
        return cls("hubspot" if isinstance(sandbox, HubSpotSandbox) else "pipedrive", sandbox)

    # -- seeding ------------------------------------------------------------------------------

    def add_person(self, name: str, emails: list[str]) -> int:
        return int(self.sandbox.add_person(name, emails))

    def add_deal(self, title: str, person_id: int, *, add_time: datetime) -> int:
        return int(self.sandbox.add_deal(title, person_id, add_time=add_time))

    def add_lead(self, title: str, person_id: int, *, add_time: datetime) -> str:
        return str(self.sandbox.add_lead(title, person_id, add_time=add_time))

    def set_deal_status(self, deal_id: int, status: str, at: datetime) -> None:
        """Win, lose, reopen or delete ("deleted": HubSpot archives) the deal at `at`."""
        self.sandbox.set_deal_status(deal_id, status, at=at)

    def close_lead(self, lead_id: str, at: datetime) -> None:
        """The lead is no longer open from `at`: Pipedrive archives it, HubSpot moves it to a
        closed stage of its pipeline (disqualified)."""
        if self.kind == "hubspot":
            self.sandbox.set_lead_stage(int(lead_id), "unqualified-stage-id", at)
        else:
            self.sandbox.archive_lead(lead_id, at)

    def lose_next_create(self) -> None:
        """The next create of an email is carried out, then left unanswered."""
        if self.kind == "hubspot":
            self.sandbox.lose_next_response(r"^/crm/v3/objects/emails/batch/create$")
        else:
            self.sandbox.lose_next_response(r"/api/v2/activities$", method="POST")

    # -- a user acting in the CRM, and the CRM refusing, between a decision and its write ----

    def before_next_create(self, action: Callable[[], object]) -> None:
        """Run `action` (a colleague deleting a deal, merging persons) just before the next
        create of an email reaches the CRM: after maillink decided, before it wrote."""
        if self.kind == "hubspot":
            self.sandbox.before_next(_HUBSPOT_CREATES, action)
        else:
            self.sandbox.before_next(_PIPEDRIVE_CREATES, action, method="POST")

    def merge_persons(self, merged: int, into: int) -> None:
        """Merge person `merged` into `into` as a CRM user (or integration) does, through the
        CRM's API: Pipedrive's PUT /v1/persons/{id}/merge, HubSpot's contacts merge."""
        if self.kind == "hubspot":
            answer = requests.post(
                f"{self.sandbox.url}/crm/v3/objects/contacts/merge",
                json={"primaryObjectId": str(into), "objectIdToMerge": str(merged)},
                headers={"Authorization": f"Bearer {self.sandbox.access_token}"},
                timeout=10,
            )
        else:
            answer = requests.put(
                f"{self.sandbox.url}/api/v1/persons/{merged}/merge",
                json={"merge_with_id": into},
                headers={"x-api-token": self.sandbox.api_token},
                timeout=10,
            )
        assert answer.status_code == 200, answer.text

    def refuse_creates(self, answer: str) -> None:
        """From now on the CRM refuses every create of an email with a 400 saying `answer`, in
        its own error shape (HubSpot's is a VALIDATION_ERROR), until `stop_refusing`."""
        body: dict[str, Any]
        if self.kind == "hubspot":
            path = _HUBSPOT_CREATES
            body = {
                "status": "error",
                "message": answer,
                "correlationId": "5c6e2b8e-8d7e-4d0f-9a53-0c1f6c1d2e3f",
                "category": "VALIDATION_ERROR",
            }
        else:
            path = _PIPEDRIVE_CREATES
            body = {
                "success": False,
                "error": answer,
                "error_info": "Please check developers.pipedrive.com for more information "
                "about Pipedrive API.",
                "data": None,
                "additional_data": None,
            }
        fault = Fault(path=path, method="POST", status=400, times=1000, body=json.dumps(body))
        self.sandbox.faults.add(fault)

    def stop_refusing(self) -> None:
        """The admin fixed the cause: the CRM takes the writes again."""
        self.sandbox.faults.clear()

    @property
    def refusals(self) -> int:
        """How many 400 answers the CRM gave."""
        return int(self.sandbox.meter.statuses[400])

    def delete_email(self, email_id: str) -> None:
        """A rep deletes the email in the CRM (a Pipedrive activity, a HubSpot engagement)."""
        if self.kind == "hubspot":
            self.sandbox.archive("emails", int(email_id))
        else:
            self.sandbox.delete_activity(int(email_id))

    def delete_item(self, kind: str, item_id: int | str, at: datetime) -> None:
        """A colleague deletes the deal or lead (HubSpot archives it; Pipedrive keeps a deleted
        deal listed as deleted and no trace of a deleted lead)."""
        if kind == "deal":
            self.set_deal_status(int(item_id), "deleted", at)
        elif self.kind == "hubspot":
            self.sandbox.archive("leads", int(item_id), at)
        else:
            self.sandbox.delete_lead(str(item_id))

    def received(self) -> int:
        """How many requests the CRM has received so far (a mark for `updates_since`)."""
        return len(self.sandbox.received)

    def updates_since(self, mark: int) -> list[str]:
        """The requests after `mark` that changed an email the CRM already had: Pipedrive's
        PATCH/PUT of an activity, HubSpot's writes of an engagement or of its associations."""
        sent = list(self.sandbox.received)[mark:]
        if self.kind == "hubspot":
            return [
                f"{r.method} {r.path}"
                for r in sent
                if r.method != "GET" and _HUBSPOT_EMAIL_CHANGES.search(r.path)
            ]
        return [f"{r.method} {r.path}" for r in sent if r.method in ("PATCH", "PUT")]

    # -- reading back -------------------------------------------------------------------------

    def emails(self) -> list[Logged]:
        """Every email the CRM holds (not deleted ones), oldest first."""
        if self.kind == "hubspot":
            return [_from_engagement(e) for e in self.sandbox.emails() if not e["archived"]]
        return [_from_activity(a) for a in self.sandbox.activities() if not a["is_deleted"]]

    def persons(self) -> list[tuple[int, str, list[str]]]:
        """Every person (contact) the CRM holds: (id, name, addresses), oldest first."""
        if self.kind == "hubspot":
            return [
                (int(c["id"]), _contact_name(c["properties"]), _contact_emails(c["properties"]))
                for c in self.sandbox.objects("contacts")
                if not c["archived"]
            ]
        return [(p.id, p.name, list(p.emails)) for p in self.sandbox.records.persons.values()]

    def emails_with_key(self, key: str) -> list[Logged]:
        return [e for e in self.emails() if e.key == key]

    def email(self, key: str) -> Logged:
        """The one email with this key (a failed assertion when there are none or several)."""
        found = self.emails_with_key(key)
        assert len(found) == 1, (key, found)
        return found[0]


def _from_activity(activity: dict[str, Any]) -> Logged:
    lines = (activity.get("note") or "").replace("<br>", "\n").splitlines()
    keys = [line.strip()[len(_KEY_LINE) :] for line in lines if line.strip().startswith(_KEY_LINE)]
    items = {
        f"{kind}:{activity[f'{kind}_id']}"
        for kind in ("deal", "lead", "project")
        if activity.get(f"{kind}_id") is not None
    }
    persons = {p["person_id"] for p in activity.get("participants") or ()}
    if activity.get("person_id") is not None:
        persons.add(activity["person_id"])
    org = activity.get("org_id")
    return Logged(
        id=str(activity["id"]),
        key=html.unescape(keys[-1]) if keys else "",
        subject=str(activity.get("subject") or ""),
        persons=frozenset(int(p) for p in persons),
        items=frozenset(items),
        organization=str(org) if org is not None else None,
        owner=str(activity["owner_id"]) if activity.get("owner_id") is not None else None,
    )


def _contact_name(props: dict[str, Any]) -> str:
    return " ".join(str(props.get(n) or "") for n in ("firstname", "lastname")).strip()


def _contact_emails(props: dict[str, Any]) -> list[str]:
    extra = [e for e in str(props.get("hs_additional_emails") or "").split(";") if e]
    return [str(props.get("email") or ""), *extra]


def _from_engagement(email: dict[str, Any]) -> Logged:
    props = email["properties"]
    links = email.get("associations") or {}
    items = {f"deal:{i}" for i in links.get("deals", ())}
    items |= {f"lead:{i}" for i in links.get("leads", ())}
    companies = links.get("companies") or []
    return Logged(
        id=str(email["id"]),
        key=str(props.get("maillink_key") or ""),
        subject=str(props.get("hs_email_subject") or ""),
        persons=frozenset(int(c) for c in links.get("contacts", ())),
        items=frozenset(items),
        organization=str(companies[0]) if companies else None,
        owner=props.get("hubspot_owner_id") or None,
    )
