"""The v4 associations API: batch read, batch create (with type ids), default associations and
batch archive, over the HubSpot-defined association types between the sandbox's objects.

Type ids are HubSpot's (contact→company 279, primary 1; deal→contact 3; email→contact 198…).
The reverse ids of the lead types (contact→lead 579/609, company→lead 611, email→lead 599) follow
HubSpot's pairing of each type with the next id; they are not in the vendored specs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Response, jsonify, request

from maillink.sandbox.hubspot.errors import ApiError
from maillink.sandbox.hubspot.records import OBJECT_TYPE_IDS, Records, iso, object_type

MAX_BATCH = 100  # v4 batch create / archive / associate-default inputs
MAX_BATCH_READ = 100  # v4 batch read inputs (HubSpot's hard limit since January 2025)
MAX_TO_PER_INPUT = 500  # associations answered per input; the rest is paged with `after`

# (from type, to type) -> {type id: label}; the first entry is the default (unlabeled) type.
TYPES: dict[tuple[str, str], dict[int, str | None]] = {
    ("contacts", "companies"): {279: None, 1: "Primary"},
    ("companies", "contacts"): {280: None, 2: "Primary"},
    ("deals", "contacts"): {3: None},
    ("contacts", "deals"): {4: None},
    ("deals", "companies"): {341: None, 5: "Primary"},
    ("companies", "deals"): {342: None, 6: "Primary"},
    ("emails", "contacts"): {198: None},
    ("contacts", "emails"): {197: None},
    ("emails", "companies"): {186: None},
    ("companies", "emails"): {185: None},
    ("emails", "deals"): {210: None},
    ("deals", "emails"): {209: None},
    ("leads", "contacts"): {608: None, 578: "Primary"},
    ("contacts", "leads"): {609: None, 579: "Primary"},
    ("leads", "companies"): {610: None},
    ("companies", "leads"): {611: None},
    ("leads", "emails"): {598: None},
    ("emails", "leads"): {599: None},
}


def reverse_type(from_type: str, to_type: str, type_id: int) -> int:
    """The id the same association has seen from the other side."""
    forward = list(TYPES[(from_type, to_type)])
    backward = list(TYPES[(to_type, from_type)])
    return backward[forward.index(type_id)]


def default_type(from_type: str, to_type: str) -> int:
    return next(iter(TYPES[(from_type, to_type)]))


def check_type(from_type: str, to_type: str, spec: Any) -> int:
    """The type id of an `AssociationSpec`, or a 400 naming what HubSpot would refuse."""
    if not isinstance(spec, dict) or spec.get("associationCategory") != "HUBSPOT_DEFINED":
        raise ApiError(400, "associationCategory must be HUBSPOT_DEFINED for these types")
    type_id = spec.get("associationTypeId")
    if type_id not in TYPES.get((from_type, to_type), {}):
        raise ApiError(
            400,
            f"{type_id} is not a valid association type between {from_type} and {to_type}",
            "VALIDATION_ERROR",
        )
    assert isinstance(type_id, int)
    return type_id


def _pair(from_name: str, to_name: str) -> tuple[str, str]:
    from_type, to_type = object_type(from_name), object_type(to_name)
    if from_type is None or to_type is None or (from_type, to_type) not in TYPES:
        raise ApiError(400, f"Unable to infer object type from: {from_name}, {to_name}")
    return from_type, to_type


def _inputs(body: Any, limit: int) -> list[dict[str, Any]]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ApiError(400, "Invalid input JSON: inputs must be a list of objects")
    if len(inputs) > limit:
        raise ApiError(400, f"The number of inputs ({len(inputs)}) exceeds the limit of {limit}")
    return inputs


def _object_id(ref: Any) -> int | None:
    raw = ref.get("id") if isinstance(ref, dict) else None
    return int(raw) if isinstance(raw, str | int) and str(raw).isdigit() else None


class AssociationViews:
    def __init__(self, records: Records, clock: Callable[[], datetime]):
        self.records = records
        self.clock = clock

    def _batch(self, results: list[Any], errors: list[dict[str, Any]], ok: int) -> Response:
        now = iso(self.clock())
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": now,
            "completedAt": now,
        }
        if errors:
            body.update(errors=errors, numErrors=len(errors))
        response = jsonify(body)
        response.status_code = 207 if errors else ok
        return response

    def read(self, from_name: str, to_name: str) -> Response:
        """POST /crm/v4/associations/{from}/{to}/batch/read."""
        from_type, to_type = _pair(from_name, to_name)
        results, missing = [], []
        with self.records.lock:
            for item in _inputs(request.get_json(silent=True), MAX_BATCH_READ):
                object_id = _object_id(item)
                linked = {}
                if object_id is not None and self.records.get(from_type, object_id):
                    linked = self.records.associated(from_type, object_id, to_type)
                if not linked:
                    missing.append(str(item.get("id")))
                    continue
                after = str(item.get("after") or "0")
                start = int(after) if after.isdigit() else 0
                page = list(linked.items())[start : start + MAX_TO_PER_INPUT]
                to = [self._labelled(from_type, to_type, oid, ids) for oid, ids in page]
                result: dict[str, Any] = {"from": {"id": str(object_id)}, "to": to}
                if start + MAX_TO_PER_INPUT < len(linked):
                    result["paging"] = {"next": {"after": str(start + MAX_TO_PER_INPUT)}}
                results.append(result)
        errors = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": f"No {to_type} is associated with {from_type} {oid}.",
                "context": {"fromObjectId": [oid]},
                "errors": [],
                "links": {},
            }
            for oid in missing
        ]
        return self._batch(results, errors, 200)

    @staticmethod
    def _labelled(from_type: str, to_type: str, oid: int, ids: set[int]) -> dict[str, Any]:
        labels = TYPES[(from_type, to_type)]
        kinds = [
            {"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": labels[type_id]}
            for type_id in sorted(ids)
        ]
        for kind in kinds:
            if kind["label"] is None:
                del kind["label"]
        return {"toObjectId": str(oid), "associationTypes": kinds}

    def create(self, from_name: str, to_name: str) -> Response:
        """POST /crm/v4/associations/{from}/{to}/batch/create."""
        from_type, to_type = _pair(from_name, to_name)
        with self.records.lock:
            inputs = _inputs(request.get_json(silent=True), MAX_BATCH)
            planned, absent = [], []
            for item in inputs:
                type_ids = [check_type(from_type, to_type, t) for t in item.get("types") or []]
                if not type_ids:
                    raise ApiError(400, "types must name at least one association type")
                ends = (_object_id(item.get("from")), _object_id(item.get("to")))
                if not self._live(from_type, ends[0]) or not self._live(to_type, ends[1]):
                    absent.append(f"{ends[0]}-{ends[1]}")
                    continue
                planned.append((ends, type_ids))
            results = []
            for (from_id, to_id), type_ids in planned:
                assert from_id is not None and to_id is not None
                for type_id in type_ids:
                    back = reverse_type(from_type, to_type, type_id)
                    self.records.associate((from_type, from_id), (to_type, to_id), type_id, back)
                results.append(self._pair_json(from_type, from_id, to_type, to_id, type_ids))
        errors = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": f"One of the objects of {pair} does not exist or is archived.",
                "context": {"ids": [pair]},
                "errors": [],
                "links": {},
            }
            for pair in absent
        ]
        return self._batch(results, errors, 201)

    def _pair_json(
        self, from_type: str, from_id: int, to_type: str, to_id: int, type_ids: list[int]
    ) -> dict[str, Any]:
        labels = TYPES[(from_type, to_type)]
        return {
            "fromObjectTypeId": OBJECT_TYPE_IDS[from_type],
            "fromObjectId": str(from_id),
            "toObjectTypeId": OBJECT_TYPE_IDS[to_type],
            "toObjectId": str(to_id),
            "labels": [labels[t] for t in type_ids if labels[t] is not None],
        }

    def _live(self, type_name: str, object_id: int | None) -> bool:
        return object_id is not None and self.records.get(type_name, object_id) is not None

    def associate_default(self, from_name: str, to_name: str) -> Response:
        """POST /crm/v4/associations/{from}/{to}/batch/associate/default."""
        from_type, to_type = _pair(from_name, to_name)
        type_id = default_type(from_type, to_type)
        back = reverse_type(from_type, to_type, type_id)
        results = []
        with self.records.lock:
            for item in _inputs(request.get_json(silent=True), MAX_BATCH):
                from_id, to_id = _object_id(item.get("from")), _object_id(item.get("to"))
                if not self._live(from_type, from_id) or not self._live(to_type, to_id):
                    raise ApiError(400, f"Object {from_id} or {to_id} does not exist")
                assert from_id is not None and to_id is not None
                self.records.associate((from_type, from_id), (to_type, to_id), type_id, back)
                results.append(
                    {
                        "from": {"id": str(from_id)},
                        "to": {"id": str(to_id)},
                        "associationSpec": {
                            "associationCategory": "HUBSPOT_DEFINED",
                            "associationTypeId": type_id,
                        },
                    }
                )
        return self._batch(results, [], 200)

    def archive(self, from_name: str, to_name: str) -> Response:
        """POST /crm/v4/associations/{from}/{to}/batch/archive: remove every association
        between the pairs (204 whatever they were)."""
        from_type, to_type = _pair(from_name, to_name)
        with self.records.lock:
            for item in _inputs(request.get_json(silent=True), MAX_BATCH):
                from_id = _object_id(item.get("from"))
                for ref in item.get("to") or []:
                    to_id = _object_id(ref)
                    if from_id is not None and to_id is not None:
                        self.records.dissociate((from_type, from_id), (to_type, to_id))
        return Response(status=204)

    def routes(self) -> list[tuple[str, str, Callable[..., Response], str]]:
        base = "/crm/v4/associations/<from_name>/<to_name>/batch"
        return [
            (f"{base}/read", "associations.read", self.read, "POST"),
            (f"{base}/create", "associations.create", self.create, "POST"),
            (f"{base}/associate/default", "associations.default", self.associate_default, "POST"),
            (f"{base}/archive", "associations.archive", self.archive, "POST"),
        ]
