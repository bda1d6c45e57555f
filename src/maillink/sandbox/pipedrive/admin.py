"""What a Pipedrive user (or another integration) does to the sandbox's records over the API,
besides the calls maillink makes: merging two persons. Tests use it to change the CRM under
maillink as people do."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flask import Response, jsonify, request

from maillink.sandbox.pipedrive.data import Records, merged_person_json
from maillink.sandbox.pipedrive.query import ApiError
from maillink.sandbox.pipedrive.webhooks import WEBHOOK_COSTS

# Operation -> token cost (the v1 spec's x-token-cost); charged like `TOKEN_COSTS`.
ADMIN_COSTS: dict[str, int] = {"persons.merge": 40, **WEBHOOK_COSTS}


def admin_routes(
    records: Records, clock: Callable[[], datetime]
) -> list[tuple[str, str, Callable[..., Response], str]]:
    """(path rule, operation, view, method) of the user-side endpoints."""

    def merge_persons(person_id: int) -> Response:
        """PUT /api/v1/persons/{id}/merge with `merge_with_id`: `id` goes into that person."""
        body = request.get_json(silent=True)
        into = body.get("merge_with_id") if isinstance(body, dict) else None
        if not isinstance(into, int) or isinstance(into, bool):
            raise ApiError(400, '"merge_with_id" is required and must be an integer')
        with records.lock:
            if person_id not in records.persons:
                raise ApiError(404, "Person not found")
            if into not in records.persons:
                raise ApiError(400, f"Person with id {into} not found")
            if into == person_id:
                raise ApiError(400, "A person cannot be merged with itself")
            kept = records.merge_persons(person_id, into, clock())
            return jsonify({"success": True, "data": merged_person_json(kept, person_id)})

    return [("/api/v1/persons/<int:person_id>/merge", "persons.merge", merge_persons, "PUT")]
