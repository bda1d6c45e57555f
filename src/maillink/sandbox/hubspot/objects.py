"""The v3 object endpoints of one record at a time: list, read (by id or a unique property),
create, update and archive, for contacts, companies, deals (also as `0-3`), leads and emails,
and the merge of two contacts. Archived objects are left out of every read unless
`archived=true` asks for them alone; a merged-away id reads as the record it went into."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Response, jsonify, request

from maillink.sandbox.hubspot.errors import ApiError
from maillink.sandbox.hubspot.records import HubObject, Records, object_type
from maillink.sandbox.hubspot.writes import Writer, require_timestamp

MAX_LIST_PAGE = 100


def resolve_type(type_name: str) -> str:
    found = object_type(type_name)
    if found is None:
        raise ApiError(400, f"Unable to infer object type from: {type_name}")
    return found


def flag(name: str) -> bool:
    return request.args.get(name, "false").lower() == "true"


def names(name: str) -> list[str]:
    """A comma-separated (or repeated) query parameter, as HubSpot reads `properties`."""
    return [n for raw in request.args.getlist(name) for n in raw.split(",") if n]


def body_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid input JSON on line 1: the body must be a JSON object")
    return body


class ObjectViews:
    def __init__(self, records: Records, clock: Callable[[], datetime]):
        self.records = records
        self.writer = Writer(records, clock)

    def find(self, type_name: str, object_id: str, id_property: str | None) -> HubObject | None:
        """The object by id or by a unique property, honouring `archived`."""
        archived = flag("archived")
        if id_property and id_property != "hs_object_id":
            if id_property not in self.records.unique(type_name):
                raise ApiError(400, f"{id_property} is not a unique property of {type_name}")
            found = self.records.find_unique(type_name, id_property, object_id)
            return found if found is not None and found.archived == archived else None
        if not object_id.isdigit():
            return None
        found = self.records.get(type_name, int(object_id), archived=archived)
        if found is None and not archived:  # a merged-away id answers as the record kept
            found = self.records.survivor(type_name, int(object_id))
        return found

    def list_page(self, type_name: str) -> Response:
        """GET /crm/v3/objects/{type}: a page of `limit` (≤100) after the cursor `after`."""
        kind = resolve_type(type_name)
        limit, after = request.args.get("limit", "10"), request.args.get("after", "0")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST_PAGE or not after.isdigit():
            raise ApiError(400, f"limit must be 1 to {MAX_LIST_PAGE}, after a previous cursor")
        archived = flag("archived")
        with self.records.lock:
            rows = [
                obj
                for obj_id, obj in sorted(self.records.objects[kind].items())
                if obj_id > int(after) and obj.archived == archived
            ]
            page = rows[: int(limit)]
            body: dict[str, Any] = {"results": [self._json(o, names("associations")) for o in page]}
        if len(rows) > len(page):
            body["paging"] = {"next": {"after": str(page[-1].id)}}
        return jsonify(body)

    def _json(self, obj: HubObject, association_types: list[str]) -> dict[str, Any]:
        body = obj.json(names("properties"), self.records.known(obj.type))
        linked: dict[str, Any] = {}
        for to_name in association_types:
            to_type = object_type(to_name)
            if to_type is None:
                continue  # HubSpot ignores association types it does not know
            found = self.records.associated(obj.type, obj.id, to_type)
            singular = {"companies": "company"}.get(to_type, to_type.rstrip("s"))
            label = (
                f"{obj.type.rstrip('s') if obj.type != 'companies' else 'company'}_to_{singular}"
            )
            results = [{"id": str(i), "type": label} for i in found]
            if results:
                linked[to_type] = {"results": results}
        if linked:
            body["associations"] = linked
        return body

    def get(self, type_name: str, object_id: str) -> Response:
        """GET /crm/v3/objects/{type}/{id}."""
        kind = resolve_type(type_name)
        with self.records.lock:
            obj = self.find(kind, object_id, request.args.get("idProperty"))
            if obj is None:
                raise ApiError(
                    404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND"
                )
            return jsonify(self._json(obj, names("associations")))

    def create(self, type_name: str) -> Response:
        """POST /crm/v3/objects/{type}: 201 with the new object."""
        kind = resolve_type(type_name)
        body = body_object()
        with self.records.lock:
            properties = self.writer.clean(kind, body.get("properties", {}))
            require_timestamp(kind, properties)
            obj = self.writer.create(kind, properties, body.get("associations") or [])
            response = jsonify(obj.json(list(properties) or None, self.records.known(kind)))
        response.status_code = 201
        return response

    def update(self, type_name: str, object_id: str) -> Response:
        """PATCH /crm/v3/objects/{type}/{id}: the given properties only."""
        kind = resolve_type(type_name)
        body = body_object()
        with self.records.lock:
            obj = self.find(kind, object_id, request.args.get("idProperty"))
            if obj is None or obj.archived:
                raise ApiError(404, "resource not found", "OBJECT_NOT_FOUND")
            properties = self.writer.clean(kind, body.get("properties", {}))
            self.writer.update(obj, properties)
            return jsonify(obj.json(list(properties) or None, self.records.known(kind)))

    def merge(self, type_name: str) -> Response:
        """POST /crm/v3/objects/contacts/merge: `objectIdToMerge` goes into `primaryObjectId`,
        which keeps its id (`Writer.merge`); 200 with the record kept."""
        kind = resolve_type(type_name)
        if kind != "contacts":
            raise ApiError(400, f"Merging {kind} is not supported by this account")
        body = body_object()
        ids = [str(body.get(n) or "") for n in ("primaryObjectId", "objectIdToMerge")]
        with self.records.lock:
            kept, merged = (self.records.get(kind, int(i)) if i.isdigit() else None for i in ids)
            if kept is None or merged is None:
                raise ApiError(
                    404,
                    f"Object not found: {ids[0] if kept is None else ids[1]}",
                    "OBJECT_NOT_FOUND",
                )
            if kept.id == merged.id:
                raise ApiError(400, "Cannot merge an object with itself")
            self.writer.merge(kept, merged)
            return jsonify(self._json(kept, []))

    def archive(self, type_name: str, object_id: str) -> Response:
        """DELETE /crm/v3/objects/{type}/{id}: archived (204 even when already gone)."""
        kind = resolve_type(type_name)
        with self.records.lock:
            obj = self.records.get(kind, int(object_id)) if object_id.isdigit() else None
            if obj is not None:
                self.writer.archive(obj)
        return Response(status=204)

    def routes(self) -> list[tuple[str, str, Callable[..., Response], str]]:
        base = "/crm/v3/objects/<type_name>"
        return [
            (base, "objects.list", self.list_page, "GET"),
            (base, "objects.create", self.create, "POST"),
            (f"{base}/merge", "objects.merge", self.merge, "POST"),
            (f"{base}/<object_id>", "objects.get", self.get, "GET"),
            (f"{base}/<object_id>", "objects.update", self.update, "PATCH"),
            (f"{base}/<object_id>", "objects.archive", self.archive, "DELETE"),
        ]
