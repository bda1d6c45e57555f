"""What a HubSpot user does to the account besides maillink's calls: adding owners, companies,
contacts (with secondary emails), deals and leads; winning, losing, reopening and archiving
deals; moving leads through their stages. Tests and `maillink.sandbox.seed` use it; the seed's
persons, deals, leads and projects keep the Pipedrive sandbox's method names and arguments, so
that one seeded team loads into either CRM (a project becomes a deal of the "projects" pipeline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from maillink.sandbox.hubspot.associations import TYPES, default_type, reverse_type
from maillink.sandbox.hubspot.records import HubObject, Owner, Records, iso
from maillink.sandbox.hubspot.writes import Writer

_DEAL_STAGES = {"open": "appointmentscheduled", "won": "closedwon", "lost": "closedlost"}
_PROJECT_STAGES = {
    "open": "projectactive",
    "completed": "projectdone",
    "canceled": "projectcanceled",
}


class Admin:
    """The controls of the account; `HubSpotSandbox` is one."""

    admin_user_id = 7_000_001  # the HubSpot user who installs the public app

    def __init__(self, records: Records, clock: Callable[[], datetime]):
        self.records = records
        self.clock = clock
        self._writer = Writer(records, clock)

    # -- people ------------------------------------------------------------------------------

    def add_owner(
        self, email: str, first_name: str = "", last_name: str = "", *, archived: bool = False
    ) -> int:
        """A HubSpot user (an owner of records); returns the owner id (`userId` differs).
        `archived`: a deactivated user, listed only with `archived=true`."""
        with self.records.lock:
            owner_id = self.records.next_id()
            user_id = 7_100_000 + owner_id
            owner = Owner(
                owner_id, user_id, email, first_name, last_name, self.clock(), archived=archived
            )
            self.records.owners[owner_id] = owner
            return owner_id

    def add_company(self, name: str, domain: str = "", *, created: datetime | None = None) -> int:
        props = {"name": name, **({"domain": domain} if domain else {})}
        return self._create("companies", props, created)

    def add_contact(
        self,
        email: str,
        firstname: str = "",
        lastname: str = "",
        *,
        additional_emails: Sequence[str] = (),
        company_id: int | None = None,
        owner_id: int | None = None,
        created: datetime | None = None,
    ) -> int:
        props = {"email": email, "firstname": firstname, "lastname": lastname}
        if additional_emails:
            props["hs_additional_emails"] = ";".join(e.lower() for e in additional_emails)
        if owner_id is not None:
            props["hubspot_owner_id"] = str(owner_id)
        if company_id is not None:
            props["associatedcompanyid"] = str(company_id)
        contact = self._create("contacts", props, created)
        if company_id is not None:
            self._link("contacts", contact, "companies", company_id, primary=True)
        return contact

    def add_person(self, name: str, emails: list[str]) -> int:
        """The seed's person: the first address is the contact's email, the others secondary."""
        first, _, last = name.partition(" ")
        return self.add_contact(emails[0], first, last, additional_emails=emails[1:])

    def add_secondary_email(self, contact_id: int, email: str) -> None:
        with self.records.lock:
            contact = self.records.objects["contacts"][contact_id]
            known = [
                e for e in (contact.properties.get("hs_additional_emails") or "").split(";") if e
            ]
            props = {"hs_additional_emails": ";".join([*known, email.lower()])}
            self._writer.update(contact, self._writer.clean("contacts", props, admin=True))

    def merge_contacts(self, merged_id: int, *, into: int, at: datetime | None = None) -> None:
        """Merge contact `merged_id` into `into`, as a user does in HubSpot (the API's
        `POST /crm/v3/objects/contacts/merge` does the same): `into` keeps its id and takes the
        other's addresses and associations; the merged-away id reads as `into`."""
        with self.records.lock:
            contacts = self.records.objects["contacts"]
            self._writer.merge(contacts[into], contacts[merged_id], at)

    # -- deals, leads, projects --------------------------------------------------------------

    def add_deal(
        self,
        title: str,
        person_id: int | None = None,
        *,
        add_time: datetime,
        status: str = "open",
        close_time: datetime | None = None,
        company_id: int | None = None,
        owner_id: int | None = None,
        expected_close: datetime | None = None,
        pipeline: str = "default",
    ) -> int:
        """A deal of the contact, created at `add_time`; a won or lost one needs `close_time`.
        `expected_close` fills `closedate` of an open deal, as sales reps do in HubSpot."""
        if status not in _DEAL_STAGES:
            raise ValueError(f"status {status!r}: use open, won or lost")
        if status != "open" and close_time is None:
            raise ValueError(f"a {status} deal needs its close_time")
        props = {"dealname": title, "pipeline": pipeline}
        if pipeline == "default":
            props["dealstage"] = _DEAL_STAGES["open"]
        if expected_close is not None:
            props["closedate"] = iso(expected_close)
        if owner_id is not None:
            props["hubspot_owner_id"] = str(owner_id)
        deal = self._create("deals", props, add_time)
        if person_id is not None:
            self._link("deals", deal, "contacts", person_id)
        if company_id is not None:
            self._link("deals", deal, "companies", company_id, primary=True)
        if status != "open":
            assert close_time is not None
            self.set_deal_status(deal, status, close_time)
        return deal

    def set_deal_status(self, deal_id: int, status: str, at: datetime) -> None:
        """Win, lose or reopen the deal at `at` (closedate is then `at`), or archive it
        ("deleted": HubSpot's delete archives)."""
        if status == "deleted":
            self.archive("deals", deal_id, at)
            return
        if status not in _DEAL_STAGES:
            raise ValueError(f"status {status!r}: use open, won, lost or deleted")
        props = {
            "dealstage": _DEAL_STAGES[status],
            "closedate": iso(at) if status != "open" else "",
        }
        with self.records.lock:
            deal = self.records.objects["deals"][deal_id]
            if deal.properties.get("pipeline") != "default":
                props["dealstage"] = {"won": "projectdone", "lost": "projectcanceled"}.get(
                    status, "projectactive"
                )
            self._writer.update(deal, self._writer.clean("deals", props), at)

    def close_deal(self, deal_id: int, *, won: bool, at: datetime) -> None:
        self.set_deal_status(deal_id, "won" if won else "lost", at)

    def add_lead(
        self,
        title: str,
        person_id: int,
        *,
        add_time: datetime,
        archived: bool = False,
        archived_at: datetime | None = None,
    ) -> int:
        """A lead of the contact; the seed's archived lead (no longer open) is disqualified."""
        lead = self._create("leads", {"hs_lead_name": title}, add_time)
        self._link("leads", lead, "contacts", person_id, primary=True)
        if archived or archived_at is not None:
            self.set_lead_stage(lead, "unqualified-stage-id", archived_at or add_time)
        return lead

    def set_lead_stage(self, lead_id: int, stage: str, at: datetime) -> None:
        with self.records.lock:
            lead = self.records.objects["leads"][lead_id]
            self._writer.update(lead, self._writer.clean("leads", {"hs_pipeline_stage": stage}), at)

    def add_project(
        self,
        title: str,
        person_id: int,
        *,
        add_time: datetime,
        status: str = "open",
        closed_at: datetime | None = None,
        **_: Any,
    ) -> int:
        """HubSpot has no projects: the seed's project is a deal of the "projects" pipeline."""
        deal = self.add_deal(title, person_id, add_time=add_time, pipeline="projects")
        if status != "open":
            stage = _PROJECT_STAGES.get(status, "projectcanceled")
            with self.records.lock:
                obj = self.records.objects["deals"][deal]
                at = closed_at or add_time
                props = self._writer.clean("deals", {"dealstage": stage, "closedate": iso(at)})
                self._writer.update(obj, props, at)
        return deal

    def archive(self, type_name: str, object_id: int, at: datetime | None = None) -> None:
        """Delete the object as a user does: HubSpot archives it (gone from reads, search and
        associations; `archived=true` still shows it)."""
        with self.records.lock:
            self._writer.archive(self.records.objects[type_name][object_id], at)

    # -- inspection --------------------------------------------------------------------------

    def objects(self, type_name: str) -> list[dict[str, Any]]:
        """Every object of the type as stored (archived ones too), with all its properties and
        its associations (type -> ids), oldest first."""
        with self.records.lock:
            return [self._dump(obj) for obj in self.records.objects[type_name].values()]

    def emails(self) -> list[dict[str, Any]]:
        """The email engagements written to the account."""
        return self.objects("emails")

    def associated_ids(self, type_name: str, object_id: int, to_type: str) -> list[int]:
        with self.records.lock:
            return list(self.records.associated(type_name, object_id, to_type))

    def define_property(self, type_name: str, name: str, *, unique: bool = False) -> None:
        """A custom property, as an account admin creates one (unique values: usable as
        `idProperty`, and a second object with the same value is refused with a 409)."""
        with self.records.lock:
            self.records.custom.setdefault(type_name, {})[name] = unique

    @property
    def search_lag(self) -> bool:
        """When True, objects written are not found by search until `catch_up_search_index`."""
        return self.records.search_lag

    @search_lag.setter
    def search_lag(self, value: bool) -> None:
        self.records.search_lag = value

    def catch_up_search_index(self) -> None:
        with self.records.lock:
            self.records.unindexed.clear()

    # -- helpers -----------------------------------------------------------------------------

    def _dump(self, obj: HubObject) -> dict[str, Any]:
        linked = {
            to_type: list(self.records.associated(obj.type, obj.id, to_type))
            for to_type in self.records.objects
        }
        return {
            "id": obj.id,
            "archived": obj.archived,
            "properties": dict(obj.properties),
            "associations": {k: v for k, v in linked.items() if v},
        }

    def _create(self, type_name: str, props: dict[str, str], created: datetime | None) -> int:
        with self.records.lock:
            cleaned = self._writer.clean(type_name, props, admin=True)
            return self._writer.create(type_name, cleaned, created=created, admin=True).id

    def _link(
        self, type_name: str, obj_id: int, to_type: str, to_id: int, primary: bool = False
    ) -> None:
        with self.records.lock:
            type_ids = [default_type(type_name, to_type)]
            if primary:
                type_ids.append(_primary(type_name, to_type))
            for type_id in type_ids:
                back = reverse_type(type_name, to_type, type_id)
                self.records.associate((type_name, obj_id), (to_type, to_id), type_id, back)


def _primary(type_name: str, to_type: str) -> int:
    labelled = [t for t, label in TYPES[(type_name, to_type)].items() if label == "Primary"]
    return labelled[0] if labelled else default_type(type_name, to_type)
