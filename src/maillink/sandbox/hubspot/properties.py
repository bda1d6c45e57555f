"""The Properties API v3 of the account's objects: read one property, list the property groups,
create a custom property.

The vendored specs have no Properties API: these answers follow HubSpot's documentation (a
property's `name`, `label`, `type`, `fieldType`, `groupName`, `hasUniqueValue`…; 409 for a name
that exists; 404 for one that does not) and are not validated against a spec. Which scopes a
call needs is modelled, not taken from a spec: reading an object type's properties needs a read
scope of that type (emails: the contacts ones or `sales-email-read`) or its schema read scope;
creating one needs the type's schema write scope (`crm.schemas.contacts.write` for emails, which
are covered by the contacts scopes). Custom properties live in `Records.custom` (name → unique
values), where the writes and `idProperty` reads find them; `unique_types` are the object types
on which a property may be created with unique values (tests take emails out of it to play an
account that refuses them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Response, jsonify

from maillink.sandbox.hubspot.errors import ApiError
from maillink.sandbox.hubspot.objects import body_object, resolve_type
from maillink.sandbox.hubspot.records import READ_ONLY, WRITABLE, Records, iso
from maillink.sandbox.hubspot.scopes import missing_scopes

# Each type's HubSpot-defined property group (the one a new property usually goes to).
GROUPS = {
    "contacts": ("contactinformation", "Contact information"),
    "companies": ("companyinformation", "Company information"),
    "deals": ("dealinformation", "Deal information"),
    "leads": ("leadinformation", "Lead information"),
    "emails": ("emailinformation", "Email information"),
}
TYPES = {"string", "number", "date", "datetime", "enumeration", "bool"}
FIELD_TYPES = {
    "string": {"text", "textarea", "html", "phonenumber", "file"},
    "number": {"number", "calculation_equation"},
    "date": {"date"},
    "datetime": {"date"},
    "enumeration": {"select", "radio", "checkbox", "booleancheckbox"},
    "bool": {"booleancheckbox"},
}
# Types of HubSpot's own properties where they are not strings (the rest are).
_DEFINED_TYPES = {
    "hs_timestamp": ("datetime", "date"),
    "hs_createdate": ("datetime", "date"),
    "hs_lastmodifieddate": ("datetime", "date"),
    "createdate": ("datetime", "date"),
    "lastmodifieddate": ("datetime", "date"),
    "closedate": ("datetime", "date"),
    "hs_object_id": ("number", "number"),
    "amount": ("number", "number"),
    "hs_email_direction": ("enumeration", "select"),
    "hs_email_status": ("enumeration", "select"),
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def _scope_type(type_name: str) -> str:
    return "contacts" if type_name == "emails" else type_name


class PropertyViews:
    """`granted` answers the scopes of the calling token (the sandbox admits it first)."""

    def __init__(
        self,
        records: Records,
        clock: Callable[[], datetime],
        granted: Callable[[], frozenset[str]],
    ):
        self.records = records
        self.clock = clock
        self.granted = granted
        self.unique_types = set(GROUPS)
        # What the API was told about the properties it created: (type, name) -> definition.
        self.defined: dict[tuple[str, str], dict[str, Any]] = {}

    def clear(self) -> None:
        """Forget the properties created through the API; unique values allowed again."""
        self.defined.clear()
        self.unique_types = set(GROUPS)

    def read(self, type_name: str, name: str) -> Response:
        """GET /crm/v3/properties/{objectType}/{propertyName}."""
        kind = resolve_type(type_name)
        self._need(kind, "read")
        with self.records.lock:
            custom = self.records.custom.get(kind, {})
            if name in custom:
                return jsonify(self._custom_json(kind, name, custom[name]))
        if name in WRITABLE[kind] | READ_ONLY[kind]:
            return jsonify(self._defined_json(kind, name))
        raise ApiError(
            404, f"Unable to find property {name} for object type {type_name}", "OBJECT_NOT_FOUND"
        )

    def groups(self, type_name: str) -> Response:
        """GET /crm/v3/properties/{objectType}/groups."""
        kind = resolve_type(type_name)
        self._need(kind, "read")
        name, label = GROUPS[kind]
        group = {"name": name, "label": label, "displayOrder": -1, "archived": False}
        return jsonify({"results": [group]})

    def create(self, type_name: str) -> Response:
        """POST /crm/v3/properties/{objectType}: 201 with the new property."""
        kind = resolve_type(type_name)
        self._need(kind, "write")
        body = body_object()
        missing = [
            k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)
        ]
        if missing:
            raise ApiError(400, f"Property definition is missing {', '.join(missing)}")
        name, prop_type, field_type = str(body["name"]), body["type"], body["fieldType"]
        if not _NAME.match(name):
            raise ApiError(400, f"Property name {name!r} must be lowercase letters, digits and _")
        if prop_type not in TYPES or field_type not in FIELD_TYPES[prop_type]:
            raise ApiError(400, f"fieldType {field_type!r} is not valid for type {prop_type!r}")
        if body["groupName"] != GROUPS[kind][0]:
            raise ApiError(400, f"Property group {body['groupName']} does not exist")
        unique = body.get("hasUniqueValue") is True
        if unique and kind not in self.unique_types:
            raise ApiError(400, f"hasUniqueValue is not supported for {type_name} properties")
        with self.records.lock:
            if name in self.records.custom.get(kind, {}) or name in self.records.known(kind):
                raise ApiError(409, f"A property named '{name}' already exists.", "CONFLICT")
            now = iso(self.clock())
            self.defined[(kind, name)] = {
                "label": str(body["label"]),
                "description": str(body.get("description") or ""),
                "groupName": str(body["groupName"]),
                "type": prop_type,
                "fieldType": field_type,
                "formField": body.get("formField") is True,
                "createdAt": now,
            }
            self.records.custom.setdefault(kind, {})[name] = unique
            response = jsonify(self._custom_json(kind, name, unique))
        response.status_code = 201
        return response

    def _custom_json(self, kind: str, name: str, unique: bool) -> dict[str, Any]:
        told = self.defined.get((kind, name), {})
        created = told.get("createdAt", iso(_EPOCH))
        return {
            "name": name,
            "label": told.get("label", name),
            "description": told.get("description", ""),
            "groupName": told.get("groupName", GROUPS[kind][0]),
            "type": told.get("type", "string"),
            "fieldType": told.get("fieldType", "text"),
            "options": [],
            "displayOrder": -1,
            "calculated": False,
            "externalOptions": False,
            "hasUniqueValue": unique,
            "hidden": False,
            "formField": told.get("formField", False),
            "modificationMetadata": {
                "archivable": True,
                "readOnlyDefinition": False,
                "readOnlyValue": False,
            },
            "createdAt": created,
            "updatedAt": created,
            "archived": False,
        }

    def _defined_json(self, kind: str, name: str) -> dict[str, Any]:
        prop_type, field_type = _DEFINED_TYPES.get(name, ("string", "text"))
        return {
            "name": name,
            "label": name.replace("hs_", "").replace("_", " ").capitalize(),
            "description": "",
            "groupName": GROUPS[kind][0],
            "type": prop_type,
            "fieldType": field_type,
            "options": [],
            "displayOrder": -1,
            "calculated": False,
            "externalOptions": False,
            "hasUniqueValue": kind == "contacts" and name == "email",
            "hidden": False,
            "hubspotDefined": True,
            "formField": False,
            "modificationMetadata": {
                "archivable": False,
                "readOnlyDefinition": True,
                "readOnlyValue": name in READ_ONLY[kind],
            },
            "createdAt": iso(_EPOCH),
            "updatedAt": iso(_EPOCH),
            "archived": False,
        }

    def _need(self, kind: str, access: str) -> None:
        """HubSpot's 403 when the token has none of the scopes the call needs."""
        scope_type = _scope_type(kind)
        needed = {f"crm.schemas.{scope_type}.{access}"}
        if access == "read":
            needed.add(f"crm.objects.{scope_type}.read")
            if kind == "emails":
                needed.add("sales-email-read")
        if needed & self.granted():
            return
        raise missing_scopes(sorted(needed))

    def routes(self) -> list[tuple[str, str, Callable[..., Response], str]]:
        base = "/crm/v3/properties/<type_name>"
        return [
            (f"{base}/groups", "properties.groups", self.groups, "GET"),
            (f"{base}/<name>", "properties.read", self.read, "GET"),
            (base, "properties.create", self.create, "POST"),
        ]
