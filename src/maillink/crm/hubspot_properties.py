"""The custom email property that holds each email's key (`maillink_key`): checked, and created
when the token may.

maillink writes every email engagement with its key in this property and finds the email
again by it after an unknown outcome (`hubspot_emails`). An account without it would refuse the
first batch create with a 400 about an unknown property, far from the cause; so the adapter
reads the property once per process (`GET /crm/v3/properties/emails/maillink_key`, HubSpot's
Properties API v3) before its first email write or lookup, and `maillink crm connect hubspot`
reads it at once:
- present: its `hasUniqueValue` says how emails are found again (unique: batch read by the
  property; not unique: through the contacts' associations);
- missing: created (`POST /crm/v3/properties/emails`: a single-line text property in one of the
  account's email property groups) with unique values, or without them when HubSpot refuses
  unique values on emails; a token that may not change the account's properties gets one line
  saying what to create and how (`KeyPropertyMissing`).
The Properties API is not among the vendored specs: the shapes here follow HubSpot's
documentation (a property's `name`, `type`, `fieldType`, `groupName`, `hasUniqueValue`; a group's
`name`, `archived`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maillink.crm.base import CRMAuthError, CRMError, CRMRefused
from maillink.crm.hubspot_http import HubSpotHTTP, HubSpotNotFound

OBJECT_TYPE = "emails"
LABEL = "maillink key"
DESCRIPTION = "The email's key in maillink (its Message-ID): how maillink finds it again."
# Preferred group for the property when the account has it; else any email property group.
PREFERRED_GROUP = "emailinformation"


@dataclass(frozen=True)
class KeyProperty:
    """What the account has: the property's name, whether HubSpot keeps its values unique, and
    whether maillink created it just now."""

    name: str
    unique: bool
    created: bool = False

    def describe(self) -> str:
        """One line for the command line."""
        how = (
            "unique values: emails are found again by it"
            if self.unique
            else "values not unique: emails are found again through their contacts"
        )
        done = "created" if self.created else "present"
        return f"HubSpot's email property {self.name}: {done} ({how})"


class KeyPropertyMissing(CRMAuthError):
    """The account has no key property and this token may not create it: the configuration
    must change (an admin creates it, or grants the app the right to)."""


class KeyPropertyUnusable(CRMAuthError):
    """The property exists but cannot hold a key (not a text property)."""


def how_to_create(name: str) -> str:
    return (
        f"create it once in HubSpot (Settings → Properties → Email properties → Create "
        f'property: internal name "{name}", field type single-line text, '
        f'"Require unique values" on), or give the app the right to change the CRM\'s '
        "properties (HubSpot's crm.schemas write scope) and run maillink again"
    )


def check_key_property(http: HubSpotHTTP, name: str, *, create: bool = True) -> KeyProperty:
    """The account's key property, created when missing (and `create`) if the token may."""
    found = read_property(http, name)
    if found is not None:
        return _usable(found, name)
    if not create:
        raise KeyPropertyMissing(f"HubSpot has no email property {name}: {how_to_create(name)}")
    return create_property(http, name)


def read_property(http: HubSpotHTTP, name: str) -> dict[str, Any] | None:
    """The property's definition, None when the account has none (404)."""
    try:
        return http.call("properties.read", "GET", f"/crm/v3/properties/{OBJECT_TYPE}/{name}")
    except HubSpotNotFound:
        return None


def _usable(found: dict[str, Any], name: str) -> KeyProperty:
    if found.get("type") != "string":
        raise KeyPropertyUnusable(
            f"HubSpot's email property {name} is a {found.get('type')} property, not text: "
            f"maillink cannot keep emails' keys in it; delete it, then {how_to_create(name)}"
        )
    return KeyProperty(name, unique=found.get("hasUniqueValue") is True)


def create_property(http: HubSpotHTTP, name: str) -> KeyProperty:
    """Create the property with unique values; without them if HubSpot refuses unique values
    on emails. `KeyPropertyMissing` when the token may not create properties."""
    body = {
        "name": name,
        "label": LABEL,
        "description": DESCRIPTION,
        "groupName": _group(http),
        "type": "string",
        "fieldType": "text",
        "formField": False,
        "hasUniqueValue": True,
    }
    try:
        created = _create(http, body)
    except CRMRefused as exc:
        if exc.status != 400:
            raise
        # Refused as invalid: try once more without unique values (the lookup then goes
        # through the contacts' associations); a second refusal is not about uniqueness.
        created = _create(http, {**body, "hasUniqueValue": False})
    if created is None:  # created meanwhile by someone else (409): read it
        again = read_property(http, name)
        if again is None:
            raise CRMError(f"HubSpot said email property {name} exists but does not show it")
        return _usable(again, name)
    return KeyProperty(name, unique=created.get("hasUniqueValue") is True, created=True)


def _create(http: HubSpotHTTP, body: dict[str, Any]) -> dict[str, Any] | None:
    """The created property; None when one of that name exists already (409)."""
    try:
        return http.call(
            "properties.create", "POST", f"/crm/v3/properties/{OBJECT_TYPE}", json=body
        )
    except CRMAuthError as exc:  # 403: the token may not change the account's properties
        name = body["name"]
        raise KeyPropertyMissing(
            f"HubSpot has no email property {name} and this token may not create it: "
            f"{how_to_create(name)}"
        ) from exc
    except CRMRefused as exc:
        if exc.status == 409:
            return None
        raise


def _group(http: HubSpotHTTP) -> str:
    """An email property group the account has (`GET /crm/v3/properties/emails/groups`)."""
    answer = http.call("properties.groups", "GET", f"/crm/v3/properties/{OBJECT_TYPE}/groups")
    names = [
        str(g["name"])
        for g in answer.get("results") or ()
        if isinstance(g, dict) and g.get("name") and not g.get("archived")
    ]
    if PREFERRED_GROUP in names:
        return PREFERRED_GROUP
    if not names:
        raise CRMError("HubSpot lists no property group for emails to create maillink_key in")
    return names[0]
