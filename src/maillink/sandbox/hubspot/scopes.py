"""The scopes each call needs, as the specs' `security` lists them, and HubSpot's 403 when the
token was not granted any of them (`MISSING_SCOPES`).

Object endpoints need `crm.objects.{type}.read` or `.write`; email engagements are covered by
the contacts scopes (or `sales-email-read`); the v4 associations need the read scope of both
object types; owners `crm.objects.owners.read`; a pipeline list the read scope of its type.
"""

from __future__ import annotations

from typing import Any

from maillink.sandbox.hubspot.errors import ApiError
from maillink.sandbox.hubspot.records import object_type

ALL_SCOPES = frozenset(
    f"crm.objects.{kind}.{access}"
    for kind in ("contacts", "companies", "deals", "leads")
    for access in ("read", "write")
) | {"crm.objects.owners.read", "sales-email-read", "oauth"}
_WRITES = {"objects.create", "objects.update", "objects.archive", "objects.merge"}
_WRITES |= {"objects.batch.create", "objects.batch.update"}


def _object_scopes(type_name: str, access: str) -> set[str]:
    kind = object_type(type_name)
    if kind is None:
        return set()  # the view answers 400 for a type it does not know
    if kind == "emails":
        return {f"crm.objects.contacts.{access}", "sales-email-read"}
    return {f"crm.objects.{kind}.{access}"}


def required(operation: str, args: dict[str, Any]) -> list[set[str]]:
    """Sets of scopes the call needs, each set satisfied by any one of its scopes."""
    if operation.startswith("objects."):
        access = "write" if operation in _WRITES else "read"
        return [_object_scopes(args["type_name"], access)]
    if operation.startswith("associations."):
        return [_object_scopes(args["from_name"], "read"), _object_scopes(args["to_name"], "read")]
    if operation.startswith("owners."):
        return [{"crm.objects.owners.read"}]
    if operation == "pipelines.list":
        return [_object_scopes(args["type_name"], "read")]
    return []


def check(operation: str, args: dict[str, Any], granted: frozenset[str]) -> None:
    """Refuse the call with HubSpot's 403 when a needed scope was not granted."""
    missing = sorted(
        scope
        for needed in required(operation, args)
        if needed and not needed & granted
        for scope in sorted(needed)
    )
    if missing:
        raise missing_scopes(missing)


def missing_scopes(needed: list[str]) -> ApiError:
    """HubSpot's 403 for a token that has none of the `needed` scopes."""
    return ApiError(
        403,
        "This app hasn't been granted all required scopes to make this call. "
        "Read more about required scopes here: https://developers.hubspot.com/scopes.",
        "MISSING_SCOPES",
        errors=[
            {
                "message": "One or more of the following scopes are required.",
                "context": {"requiredGranularScopes": needed},
            }
        ],
    )
