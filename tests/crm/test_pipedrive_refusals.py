"""Pipedrive's refusals as the adapter reports them, and the sandbox's refusals and person merge
held against Pipedrive's specs (issue 9 §1), over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

import openapi_check
from maillink.crm.base import (
    ActivityDraft,
    CRMRecordGone,
    CRMRefused,
    CRMUnavailable,
)
from maillink.crm.pipedrive import PipedriveCRM
from maillink.model import ItemKind, ItemRef
from maillink.sandbox._server import Fault
from maillink.sandbox.pipedrive import ADMIN_COSTS, PipedriveSandbox

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0 = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
TOKEN = {"x-api-token": "sandbox-token"}


@pytest.fixture(scope="module")
def server() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox(clock=lambda: NOW) as running:
        yield running


@pytest.fixture
def sandbox(server: PipedriveSandbox) -> PipedriveSandbox:
    server.reset()
    return server


@pytest.fixture
def crm(sandbox: PipedriveSandbox) -> PipedriveCRM:
    return PipedriveCRM(sandbox.url, api_token=sandbox.api_token, max_retries=1, max_wait=0.1)


def _draft(person_ids: tuple[int, ...], *items: ItemRef) -> ActivityDraft:
    return ActivityDraft(
        key="k1@mail.example",
        subject="Quote",
        when=NOW - timedelta(days=1),
        person_ids=person_ids,
        items=items,
        note="maillink-id: k1@mail.example",
    )


def _merge(sandbox: PipedriveSandbox, person_id: int, into: int) -> requests.Response:
    return requests.put(
        f"{sandbox.url}/api/v1/persons/{person_id}/merge",
        json={"merge_with_id": into},
        headers=TOKEN,
        timeout=10,
    )


@pytest.mark.parametrize("kind", ["deal", "project"])
def test_write_naming_a_deleted_item_is_refused_as_gone(
    sandbox: PipedriveSandbox, crm: PipedriveCRM, kind: str
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    if kind == "deal":
        item = sandbox.add_deal("Licences", ann, add_time=T0)
        sandbox.set_deal_status(item, "deleted", at=NOW)
    else:
        item = sandbox.add_project("Rollout", ann, add_time=T0)
        del sandbox.records.projects[item]  # deleted for good: Pipedrive no longer has it
    with pytest.raises(CRMRecordGone) as refused:
        crm.create_activity(_draft((ann,), ItemRef(ItemKind(kind), str(item))))
    assert (refused.value.status, refused.value.kind, refused.value.record_id) == (
        400,
        kind,
        str(item),
    )
    assert sandbox.meter.requests["activities.create"] == 1  # a refusal is not retried


def test_write_naming_a_deleted_lead_is_refused_as_gone(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    lead = sandbox.add_lead("Inbound", ann, add_time=T0)
    sandbox.delete_lead(lead)
    with pytest.raises(CRMRecordGone) as refused:
        crm.create_activity(_draft((ann,), ItemRef(ItemKind.LEAD, lead)))
    assert (refused.value.kind, refused.value.record_id) == ("lead", lead)


def test_person_merged_away_is_gone_and_its_records_follow_the_one_kept(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    kept = sandbox.add_person("Ann Lee", ["ann.lee@example.com"])
    deal = sandbox.add_deal("Licences", ann, add_time=T0)
    created = crm.create_activity(_draft((ann,)))

    merged = _merge(sandbox, ann, kept)
    assert merged.status_code == 200, merged.text
    assert merged.json()["data"]["id"] == kept and merged.json()["data"]["merge_what_id"] == ann

    assert [p.id for p in crm.search_persons("ann@example.com")] == [kept]
    assert {i.ref for i in crm.items_of_person(kept)} == {ItemRef(ItemKind.DEAL, str(deal))}
    assert sandbox.activities()[0]["person_id"] == kept
    with pytest.raises(CRMRecordGone) as refused:
        crm.create_activity(_draft((ann,)))
    assert (refused.value.kind, refused.value.record_id) == ("person", str(ann))
    with pytest.raises(CRMRecordGone):
        crm.update_activity(created, _draft((kept, ann)))


def test_other_4xx_is_refused_for_good_and_5xx_stays_transient(
    sandbox: PipedriveSandbox, crm: PipedriveCRM
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    for status, error in ((400, "Subject is too long"), (402, "Payment required")):
        body = {"success": False, "error": error, "data": None}
        sandbox.faults.add(Fault(path="/api/v2/activities$", status=status, body=json.dumps(body)))
        with pytest.raises(CRMRefused) as refused:
            crm.create_activity(_draft((ann,)))
        assert not isinstance(refused.value, CRMRecordGone)
        assert (refused.value.status, refused.value.answer) == (status, error)
    created = crm.create_activity(_draft((ann,)))
    sandbox.faults.add(Fault(path="/api/v2/activities/", status=503, times=5))
    with pytest.raises(CRMUnavailable) as transient:
        crm.update_activity(created, _draft((ann,)))
    assert not isinstance(transient.value, CRMRefused)


def test_sandbox_refusals_and_merge_answer_in_the_shape_of_the_spec(
    sandbox: PipedriveSandbox,
) -> None:
    ann = sandbox.add_person("Ann", ["ann@example.com"])
    kept = sandbox.add_person("Ann Lee", ["ann.lee@example.com"])
    deal = sandbox.add_deal("Licences", ann, add_time=T0)
    sandbox.set_deal_status(deal, "deleted", at=NOW)
    refused = requests.post(
        f"{sandbox.url}/api/v2/activities",
        json={"subject": "Quote", "deal_id": deal, "person_id": ann},
        headers=TOKEN,
        timeout=10,
    )
    assert refused.status_code == 400
    assert openapi_check.response_errors("/api/v2/activities", "POST", 400, refused.json()) == []
    assert refused.json()["success"] is False
    assert refused.json()["error"] == f"Deal with id {deal} not found"

    merged = _merge(sandbox, ann, kept)
    path = f"/api/v1/persons/{ann}/merge"
    assert openapi_check.request_errors(path, "PUT", {"merge_with_id": kept}) == []
    assert openapi_check.response_errors(path, "PUT", 200, merged.json()) == []
    assert ADMIN_COSTS["persons.merge"] == openapi_check.token_cost(path, "PUT")
    assert sandbox.meter.units["persons.merge"] == ADMIN_COSTS["persons.merge"]
    again = _merge(sandbox, ann, kept)
    assert again.status_code == 404 and again.json()["success"] is False
    assert openapi_check.response_errors(path, "PUT", 404, again.json()) == []
    assert _merge(sandbox, kept, kept).status_code == 400
    unauthorized = requests.put(
        f"{sandbox.url}/api/v1/persons/{kept}/merge", json={"merge_with_id": 1}, timeout=10
    )
    assert unauthorized.status_code == 401
