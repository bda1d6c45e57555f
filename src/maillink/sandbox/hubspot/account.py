"""The account's settings that the objects refer to: owners (`/crm/v3/owners`) and the deal and
lead pipelines (`/crm/v3/pipelines/{type}`).

The vendored specs have no pipelines API: its answers are modelled on HubSpot's documented
shape (pipelines with stages; a deal stage's `metadata` holds `isClosed` and `probability` as
strings, closed won is probability "1.0") and are not validated against a spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, jsonify, request

from maillink.sandbox.hubspot.errors import ApiError
from maillink.sandbox.hubspot.records import Records, iso

_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Stage:
    id: str
    label: str
    probability: str
    closed: bool = False

    @property
    def won(self) -> bool:
        return self.closed and self.probability == "1.0"

    def json(self, order: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "displayOrder": order,
            "metadata": {"isClosed": str(self.closed).lower(), "probability": self.probability},
            "createdAt": iso(_EPOCH),
            "updatedAt": iso(_EPOCH),
            "archived": False,
            "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
        }


@dataclass(frozen=True)
class Pipeline:
    id: str
    label: str
    stages: tuple[Stage, ...]

    def stage(self, stage_id: str) -> Stage | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    def json(self, order: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "displayOrder": order,
            "stages": [stage.json(i) for i, stage in enumerate(self.stages)],
            "createdAt": iso(_EPOCH),
            "updatedAt": iso(_EPOCH),
            "archived": False,
        }


# HubSpot's default sales pipeline, and a second one where the seeded team's projects live.
PIPELINES: dict[str, tuple[Pipeline, ...]] = {
    "deals": (
        Pipeline(
            "default",
            "Sales Pipeline",
            (
                Stage("appointmentscheduled", "Appointment Scheduled", "0.2"),
                Stage("qualifiedtobuy", "Qualified To Buy", "0.4"),
                Stage("presentationscheduled", "Presentation Scheduled", "0.6"),
                Stage("decisionmakerboughtin", "Decision Maker Bought-In", "0.8"),
                Stage("contractsent", "Contract Sent", "0.9"),
                Stage("closedwon", "Closed Won", "1.0", closed=True),
                Stage("closedlost", "Closed Lost", "0.0", closed=True),
            ),
        ),
        Pipeline(
            "projects",
            "Projects",
            (
                Stage("projectactive", "Active", "0.5"),
                Stage("projectdone", "Done", "1.0", closed=True),
                Stage("projectcanceled", "Canceled", "0.0", closed=True),
            ),
        ),
    ),
    "leads": (
        Pipeline(
            "lead-pipeline-id",
            "Leads pipeline",
            (
                Stage("new-stage-id", "New", "0.1"),
                Stage("attempting-stage-id", "Attempting", "0.2"),
                Stage("connected-stage-id", "Connected", "0.4"),
                Stage("qualified-stage-id", "Qualified", "1.0", closed=True),
                Stage("unqualified-stage-id", "Disqualified", "0.0", closed=True),
            ),
        ),
    ),
}
DEFAULT_PIPELINE = {"deals": "default", "leads": "lead-pipeline-id"}


def find_pipeline(type_name: str, pipeline_id: str) -> Pipeline | None:
    return next((p for p in PIPELINES.get(type_name, ()) if p.id == pipeline_id), None)


class AccountViews:
    def __init__(self, records: Records, clock: Callable[[], datetime]):
        self.records = records
        self.clock = clock

    def owners(self) -> Response:
        """GET /crm/v3/owners: by `email`, paged by `limit` (≤500) and `after`."""
        email = request.args.get("email", "").strip().lower()
        archived = request.args.get("archived", "false").lower() == "true"
        limit = request.args.get("limit", "100")
        after = request.args.get("after", "0")
        if not limit.isdigit() or not 1 <= int(limit) <= 500 or not after.isdigit():
            raise ApiError(400, "limit must be 1 to 500 and after a cursor from a previous page")
        with self.records.lock:
            owners = [
                o
                for o in sorted(self.records.owners.values(), key=lambda o: o.id)
                if o.archived == archived and (not email or o.email.lower() == email)
            ]
        page = owners[int(after) : int(after) + int(limit)]
        body: dict[str, Any] = {"results": [o.json() for o in page]}
        if int(after) + int(limit) < len(owners):
            body["paging"] = {"next": {"after": str(int(after) + int(limit))}}
        return jsonify(body)

    def owner(self, owner_id: str) -> Response:
        """GET /crm/v3/owners/{ownerId} (`idProperty=userId` looks up by user id)."""
        by_user = request.args.get("idProperty", "id") == "userId"
        with self.records.lock:
            for owner in self.records.owners.values():
                if str(owner.user_id if by_user else owner.id) == owner_id:
                    return jsonify(owner.json())
        raise ApiError(404, f"Owner {owner_id} not found", "OBJECT_NOT_FOUND")

    def pipelines(self, type_name: str) -> Response:
        """GET /crm/v3/pipelines/{deals|leads}."""
        if type_name not in PIPELINES:
            raise ApiError(400, f"Unable to infer object type from: {type_name}")
        return jsonify({"results": [p.json(i) for i, p in enumerate(PIPELINES[type_name])]})

    def routes(self) -> list[tuple[str, str, Callable[..., Response], str]]:
        return [
            ("/crm/v3/owners", "owners.list", self.owners, "GET"),
            ("/crm/v3/owners/", "owners.list.slash", self.owners, "GET"),
            ("/crm/v3/owners/<owner_id>", "owners.get", self.owner, "GET"),
            ("/crm/v3/pipelines/<type_name>", "pipelines.list", self.pipelines, "GET"),
        ]
