"""How the account takes a write: property checks as strict as HubSpot's (unknown and read-only
properties, emails, datetimes, enumerations, pipeline stages, unique values), inline
associations, and the properties HubSpot calculates (a deal's hs_is_closed, hs_is_closed_won,
the date it entered its stage, its closedate once closed)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from maillink.sandbox.hubspot.account import DEFAULT_PIPELINE, find_pipeline
from maillink.sandbox.hubspot.associations import TYPES, check_type, reverse_type
from maillink.sandbox.hubspot.errors import ApiError, invalid_properties
from maillink.sandbox.hubspot.records import (
    EMAIL_DIRECTIONS,
    EMAIL_STATUSES,
    READ_ONLY,
    HubObject,
    Records,
    created_property,
    iso,
    modified_property,
    parse_time,
)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATETIMES = {"closedate", "hs_timestamp"}
LEAD_PRIMARY_CONTACT = 578


class Writer:
    """Creates, updates and archives objects; the caller holds `records.lock`."""

    def __init__(self, records: Records, clock: Callable[[], datetime]):
        self.records = records
        self.clock = clock

    def clean(self, type_name: str, raw: Any, *, admin: bool = False) -> dict[str, str]:
        """The properties as HubSpot stores them, or the 400 it answers."""
        if not isinstance(raw, dict):
            raise ApiError(400, "Invalid input JSON: properties must be an object")
        problems: list[tuple[str, str, str]] = []
        cleaned: dict[str, str] = {}
        for name, value in raw.items():
            if name in READ_ONLY[type_name] and not admin:
                message = f'"{name}" is a read only property; its value cannot be set.'
                problems.append((name, "READ_ONLY_VALUE", message))
            elif name not in self.records.known(type_name):
                problems.append(
                    (name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
                )
            elif not isinstance(value, str | int | float | bool):
                problems.append((name, "INVALID_TYPE", f'"{name}" takes a string value'))
            else:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                problem = _check_value(type_name, name, text)
                if problem:
                    problems.append((name, problem[0], problem[1]))
                else:
                    cleaned[name] = _normalize(name, text)
        if problems:
            raise invalid_properties(problems)
        return cleaned

    def create(
        self,
        type_name: str,
        properties: dict[str, str],
        associations: Any = (),
        *,
        created: datetime | None = None,
        admin: bool = False,
    ) -> HubObject:
        """A new object with its inline associations (`PublicAssociationsForObject` list)."""
        self.check_unique(type_name, properties, None)
        links = self._links(type_name, associations)
        if (
            type_name == "leads"
            and not admin
            and LEAD_PRIMARY_CONTACT not in {t for _, _, t in links}
        ):
            raise ApiError(
                400,
                "A lead must be created with an association to its primary contact "
                f"(association type {LEAD_PRIMARY_CONTACT})",
            )
        now = self.clock()
        when = created or now
        obj = HubObject(type_name, self.records.next_id(), {}, when, now)
        obj.properties[created_property(type_name)] = iso(when)
        if type_name in DEFAULT_PIPELINE:
            pipeline_key = "pipeline" if type_name == "deals" else "hs_pipeline"
            properties = {pipeline_key: DEFAULT_PIPELINE[type_name], **properties}
        self._apply(obj, properties, when)
        self.records.objects[type_name][obj.id] = obj
        for to_type, to_id, type_id in links:
            back = reverse_type(type_name, to_type, type_id)
            self.records.associate((type_name, obj.id), (to_type, to_id), type_id, back)
        self.records.changed(obj, "creation", dict(obj.properties))
        return obj

    def update(
        self, obj: HubObject, properties: dict[str, str], at: datetime | None = None
    ) -> None:
        self.check_unique(obj.type, properties, obj.id)
        before = dict(obj.properties)
        self._apply(obj, properties, at or self.clock())
        changed = {k: v for k, v in obj.properties.items() if before.get(k) != v}
        self.records.changed(obj, "propertyChange", changed)

    def forget(self, obj: HubObject) -> None:
        """Undo a creation: the object and its associations are gone (a refused batch)."""
        self.records.objects[obj.type].pop(obj.id, None)
        self.records.changed(obj, "forgotten", {})
        for key in [k for k in self.records.links if (k[0], k[1]) == (obj.type, obj.id)]:
            self.records.dissociate((key[0], key[1]), (key[2], key[3]))

    def archive(self, obj: HubObject, at: datetime | None = None) -> None:
        obj.archived_at = obj.updated = at or self.clock()
        self.records.unindexed.discard((obj.type, obj.id))
        self.records.changed(obj, "deletion", {})

    def merge(self, kept: HubObject, merged: HubObject, at: datetime | None = None) -> None:
        """HubSpot's merge of two contacts: `kept` keeps its id and its values, takes the other's
        addresses as secondary emails and its associations; the merged-away record leaves every
        list, search and association, and its id answers as `kept` (`Records.survivor`)."""
        when = at or self.clock()
        primary = (kept.properties.get("email") or "").lower()
        emails = [e for e in (kept.properties.get("hs_additional_emails") or "").split(";") if e]
        for address in [
            merged.properties.get("email") or "",
            *(merged.properties.get("hs_additional_emails") or "").split(";"),
        ]:
            if address and address.lower() != primary and address.lower() not in emails:
                emails.append(address.lower())
        ids = [i for i in (kept.properties.get("hs_merged_object_ids") or "").split(";") if i]
        props = {
            "hs_additional_emails": ";".join(emails),
            "hs_merged_object_ids": ";".join([*ids, str(merged.id)]),
        }
        for key in [k for k in self.records.links if (k[0], k[1]) == (merged.type, merged.id)]:
            _, _, to_type, to_id = key
            labels = TYPES[(kept.type, to_type)]
            has_primary = any(
                labels.get(t) == "Primary"
                for other in self.records.associated(kept.type, kept.id, to_type).values()
                for t in other
            )
            if (to_type, to_id) != (kept.type, kept.id):
                for type_id in sorted(self.records.links[key]):
                    if labels.get(type_id) == "Primary" and has_primary:
                        continue  # the kept record's primary company stays its primary
                    back = reverse_type(kept.type, to_type, type_id)
                    self.records.associate((kept.type, kept.id), (to_type, to_id), type_id, back)
            self.records.dissociate((merged.type, merged.id), (to_type, to_id))
        del self.records.objects[merged.type][merged.id]
        self.records.merged[(merged.type, merged.id)] = kept.id
        self.records.unindexed.discard((merged.type, merged.id))
        self.update(kept, props, when)
        self.records.changed(kept, "merge", {"mergedObjectIds": str(merged.id)})

    def _apply(self, obj: HubObject, properties: dict[str, str], at: datetime) -> None:
        stage_before = obj.properties.get(
            "dealstage" if obj.type == "deals" else "hs_pipeline_stage"
        )
        before = dict(obj.properties)
        for name, value in properties.items():
            if value == "":
                obj.properties.pop(name, None)  # HubSpot clears a property set to ""
            else:
                obj.properties[name] = value
        try:
            if obj.type in ("deals", "leads"):
                self._stage(obj, stage_before, at)
        except ApiError:
            obj.properties = before  # a refused write changes nothing
            raise
        obj.updated = at
        obj.properties[modified_property(obj.type)] = iso(at)
        obj.properties["hs_object_id"] = str(obj.id)
        if self.records.search_lag:
            self.records.unindexed.add((obj.type, obj.id))

    def _stage(self, obj: HubObject, stage_before: str | None, at: datetime) -> None:
        """Check the pipeline stage and set what HubSpot calculates from it."""
        deal = obj.type == "deals"
        pipeline_id = obj.properties.get("pipeline" if deal else "hs_pipeline", "")
        pipeline = find_pipeline(obj.type, pipeline_id)
        if pipeline is None:
            raise invalid_properties(
                [("pipeline", "INVALID_OPTION", f"{pipeline_id} is not a pipeline")]
            )
        stage_key = "dealstage" if deal else "hs_pipeline_stage"
        stage_id = obj.properties.setdefault(stage_key, pipeline.stages[0].id)
        stage = pipeline.stage(stage_id)
        if stage is None:
            message = f"{stage_id} is not a valid stage of pipeline {pipeline.id}"
            raise invalid_properties([(stage_key, "INVALID_OPTION", message)])
        if stage_id != stage_before:
            obj.properties["hs_v2_date_entered_current_stage"] = iso(at)
        if deal:
            obj.properties["hs_is_closed"] = str(stage.closed).lower()
            obj.properties["hs_is_closed_won"] = str(stage.won).lower()
            if stage.closed and stage_id != stage_before and not obj.properties.get("closedate"):
                obj.properties["closedate"] = iso(at)

    def check_unique(self, type_name: str, properties: dict[str, str], own_id: int | None) -> None:
        for name in self.records.unique(type_name) & set(properties):
            other = self.records.find_unique(type_name, name, properties[name])
            if other is not None and other.id != own_id:
                if type_name == "contacts":
                    raise ApiError(
                        409, f"Contact already exists. Existing ID: {other.id}", "CONFLICT"
                    )
                raise ApiError(
                    409,
                    f'An object with the unique value "{properties[name]}" for {name} already '
                    f"exists. Existing ID: {other.id}",
                    "CONFLICT",
                    context={name: [properties[name]], "id": [str(other.id)]},
                )

    def _links(self, type_name: str, associations: Any) -> list[tuple[str, int, int]]:
        """(to type, to id, type id) of each inline association, checked."""
        if associations is None:
            return []
        if not isinstance(associations, list | tuple):
            raise ApiError(400, "Invalid input JSON: associations must be a list")
        links = []
        for association in associations:
            if not isinstance(association, dict):
                raise ApiError(400, "Invalid input JSON: each association must be an object")
            to = association.get("to")
            to_id = str(to.get("id", "")) if isinstance(to, dict) else ""
            for spec in association.get("types") or []:
                to_type = _target_type(type_name, spec)
                check_type(type_name, to_type, spec)
                if not to_id.isdigit() or self.records.get(to_type, int(to_id)) is None:
                    raise ApiError(
                        400,
                        f"One or more associations are invalid: {to_type} {to_id} does not exist",
                        context={"toObjectId": [to_id]},
                    )
                links.append((to_type, int(to_id), spec["associationTypeId"]))
        return links


def _target_type(type_name: str, spec: Any) -> str:
    type_id = spec.get("associationTypeId") if isinstance(spec, dict) else None
    for (from_type, to_type), ids in TYPES.items():
        if from_type == type_name and type_id in ids:
            return to_type
    raise ApiError(400, f"{type_id} is not a valid association type from {type_name}")


def _check_value(type_name: str, name: str, value: str) -> tuple[str, str] | None:
    if name == "email" and value and not _EMAIL.match(value.strip()):
        return ("INVALID_EMAIL", f"Email address {value} is invalid")
    if name in _DATETIMES and value and parse_time(value) is None:
        return ("INVALID_DATE", f"{value} is not a valid datetime for {name}")
    if name == "hs_email_direction" and value not in EMAIL_DIRECTIONS:
        return ("INVALID_OPTION", f"{value} was not one of the allowed options: {EMAIL_DIRECTIONS}")
    if name == "hs_email_status" and value and value not in EMAIL_STATUSES:
        return ("INVALID_OPTION", f"{value} was not one of the allowed options: {EMAIL_STATUSES}")
    return None


def _normalize(name: str, value: str) -> str:
    if name == "email":
        return value.strip().lower()
    if name in _DATETIMES and value:
        parsed = parse_time(value)
        assert parsed is not None
        return iso(parsed)
    return value


def require_timestamp(type_name: str, properties: dict[str, str]) -> None:
    """An email engagement is created with its `hs_timestamp` (HubSpot requires it)."""
    if type_name == "emails" and not properties.get("hs_timestamp"):
        raise invalid_properties([("hs_timestamp", "REQUIRED", "hs_timestamp is required")])
