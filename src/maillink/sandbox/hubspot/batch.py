"""The v3 batch endpoints (read, create, update: at most 100 inputs) and the search endpoint.

- Batch read by `idProperty=email` matches a contact's primary `email` only, as HubSpot's
  unique-value lookup does; its secondary addresses (`hs_additional_emails`) are found through
  the search endpoint. Inputs the account does not have come back as a 207 with an
  OBJECT_NOT_FOUND error naming them.
- HubSpot does not promise batch results in input order: the sandbox answers them in reverse,
  so a client that matches results to inputs by position fails its tests.
- Batch create is all or nothing: one refused input refuses the batch.
- Search never shows archived objects, nor (with `search_lag`) objects written since the
  index last caught up (HubSpot's search index trails writes by seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Response, jsonify, request

from maillink.sandbox.hubspot.errors import ApiError, not_found
from maillink.sandbox.hubspot.objects import ObjectViews, body_object, resolve_type
from maillink.sandbox.hubspot.records import HubObject, Records, iso
from maillink.sandbox.hubspot.search import parse_search, run_search, unknown_properties
from maillink.sandbox.hubspot.writes import require_timestamp

MAX_BATCH = 100
_KIND = {"contacts": "CONTACT", "companies": "COMPANY", "deals": "DEAL", "emails": "EMAIL"}
_KIND["leads"] = "LEAD"


def batch_inputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ApiError(400, "Invalid input JSON: inputs must be a list of objects")
    if len(inputs) > MAX_BATCH:
        raise ApiError(
            400,
            f"The number of inputs ({len(inputs)}) exceeds the batch limit of {MAX_BATCH}",
            context={"inputs": [str(len(inputs))]},
        )
    return inputs


class BatchViews:
    def __init__(self, records: Records, clock: Callable[[], datetime], objects: ObjectViews):
        self.records = records
        self.clock = clock
        self.objects = objects
        self.writer = objects.writer

    def _answer(
        self, results: list[HubObject], names: list[str] | None, errors: list[Any], ok: int
    ) -> Response:
        now = iso(self.clock())
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": [obj.json(names, self.records.known(obj.type)) for obj in reversed(results)],
            "startedAt": now,
            "completedAt": now,
        }
        if errors:
            body.update(errors=errors, numErrors=len(errors))
        response = jsonify(body)
        response.status_code = 207 if errors else ok
        return response

    def read(self, type_name: str) -> Response:
        """POST /crm/v3/objects/{type}/batch/read."""
        kind = resolve_type(type_name)
        body = body_object()
        inputs = batch_inputs(body)
        id_property = body.get("idProperty")
        found: list[HubObject] = []
        missing: list[str] = []
        with self.records.lock:
            for item in inputs:
                object_id = str(item.get("id", ""))
                obj = self.objects.find(kind, object_id, id_property)
                if obj is None:
                    missing.append(object_id)
                elif obj not in found:
                    found.append(obj)
            errors = [not_found(_KIND[kind], missing)] if missing else []
            return self._answer(found, body.get("properties") or None, errors, 200)

    def create(self, type_name: str) -> Response:
        """POST /crm/v3/objects/{type}/batch/create: 201 with every new object."""
        kind = resolve_type(type_name)
        inputs = batch_inputs(body_object())
        with self.records.lock:
            cleaned = []
            for item in inputs:
                properties = self.writer.clean(kind, item.get("properties", {}))
                require_timestamp(kind, properties)
                cleaned.append((properties, item.get("associations") or []))
            self._refuse_repeated_unique(kind, [p for p, _ in cleaned])
            created: list[HubObject] = []
            try:
                for properties, associations in cleaned:
                    created.append(self.writer.create(kind, properties, associations))
            except ApiError:
                for obj in created:  # all or nothing
                    self.writer.forget(obj)
                raise
            names = sorted({n for p, _ in cleaned for n in p}) or None
            return self._answer(created, names, [], 201)

    def _refuse_repeated_unique(self, kind: str, batch: list[dict[str, str]]) -> None:
        """Two inputs of one batch with the same unique value: refused before any write."""
        for name in sorted(self.records.unique(kind)):
            values = [p[name].lower() if name == "email" else p[name] for p in batch if name in p]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ApiError(
                    400,
                    f"Duplicate {name} values in one batch: {', '.join(repeated)}",
                    context={name: repeated},
                )
        # Values already taken are refused by the writer (409) before anything is written.
        for properties in batch:
            self.writer.check_unique(kind, properties, None)

    def update(self, type_name: str) -> Response:
        """POST /crm/v3/objects/{type}/batch/update: the given properties of each input."""
        kind = resolve_type(type_name)
        inputs = batch_inputs(body_object())
        with self.records.lock:
            targets = []
            for item in inputs:
                obj = self.objects.find(kind, str(item.get("id", "")), item.get("idProperty"))
                if obj is None:
                    raise ApiError(404, f"Object {item.get('id')} not found", "OBJECT_NOT_FOUND")
                targets.append((obj, self.writer.clean(kind, item.get("properties", {}))))
            saved = [(obj, dict(obj.properties), obj.updated) for obj, _ in targets]
            try:
                for obj, properties in targets:
                    self.writer.update(obj, properties)
            except ApiError:
                for obj, properties, updated in saved:  # all or nothing
                    obj.properties, obj.updated = properties, updated
                raise
            names = sorted({n for _, p in targets for n in p}) or None
            return self._answer([obj for obj, _ in targets], names, [], 200)

    def search(self, type_name: str) -> Response:
        """POST /crm/v3/objects/{type}/search."""
        kind = resolve_type(type_name)
        query = parse_search(request.get_json(silent=True))
        unknown = unknown_properties(query, self.records.known(kind))
        if unknown:
            raise ApiError(
                400,
                f"There was a problem with the request: unknown properties {', '.join(unknown)}",
                context={"propertyName": unknown},
            )
        with self.records.lock:
            visible = [
                obj
                for obj in self.records.objects[kind].values()
                if not obj.archived and (kind, obj.id) not in self.records.unindexed
            ]
            page, total = run_search(visible, query)
            known = self.records.known(kind)
            results = [obj.json(query.properties or None, known) for obj in page]
        body: dict[str, Any] = {"total": total, "results": results}
        end = query.after + len(page)
        if end < total:
            body["paging"] = {"next": {"after": str(end)}}
        return jsonify(body)

    def routes(self) -> list[tuple[str, str, Callable[..., Response], str]]:
        base = "/crm/v3/objects/<type_name>"
        return [
            (f"{base}/batch/read", "objects.batch.read", self.read, "POST"),
            (f"{base}/batch/create", "objects.batch.create", self.create, "POST"),
            (f"{base}/batch/update", "objects.batch.update", self.update, "POST"),
            (f"{base}/search", "objects.search", self.search, "POST"),
        ]
