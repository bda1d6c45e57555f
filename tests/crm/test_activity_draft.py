"""The outbox keeps each activity draft as JSON: every field survives the round trip."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from maillink.crm.activity import draft_from_json, draft_to_json
from maillink.crm.base import ActivityDraft
from maillink.model import Address, Direction, ItemKind, ItemRef


def test_a_draft_survives_its_json_round_trip_with_every_field() -> None:
    draft = ActivityDraft(
        key="gmail:abc:<m1@example.com>",
        subject="Quote",
        when=datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
        person_ids=(12, 7),
        items=(ItemRef(ItemKind.DEAL, "4"), ItemRef(ItemKind.LEAD, "9f0c")),
        note="<p>Quote</p>\nmaillink-id: gmail:abc:&lt;m1@example.com&gt;",
        owner_id="3",
        organization_id="41",
        direction=Direction.INBOUND,
        sender=Address("ann@customer.example", "Ann"),
        to=(Address("rep@acme.example"),),
        cc=(Address("boss@acme.example", "Boss"), Address("cy@customer.example")),
    )
    stored = draft_to_json(draft)
    assert set(stored) == {f.name for f in dataclasses.fields(ActivityDraft)}
    assert draft_from_json(stored) == draft


def test_a_draft_stored_before_the_owner_and_address_fields_still_loads() -> None:
    stored = {
        "key": "gmail:abc:<m1@example.com>",
        "subject": "Quote",
        "when": "2026-11-02T09:30:00+00:00",
        "person_ids": [12],
        "items": ["deal:4"],
        "note": "maillink-id: gmail:abc:&lt;m1@example.com&gt;",
    }
    draft = draft_from_json(stored)
    assert (draft.owner_id, draft.organization_id, draft.direction, draft.sender) == (
        None,
        None,
        None,
        None,
    )
    assert (draft.to, draft.cc) == ((), ())
