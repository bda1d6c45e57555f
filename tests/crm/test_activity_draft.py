"""The outbox keeps each activity draft as JSON: every field survives the round trip."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from maillink.crm.activity import draft_from_json, draft_to_json
from maillink.crm.base import ActivityDraft
from maillink.model import ItemKind, ItemRef


def test_a_draft_survives_its_json_round_trip_with_every_field() -> None:
    draft = ActivityDraft(
        key="gmail:abc:<m1@example.com>",
        subject="Quote",
        when=datetime(2026, 11, 2, 9, 30, tzinfo=UTC),
        person_ids=(12, 7),
        items=(ItemRef(ItemKind.DEAL, "4"), ItemRef(ItemKind.LEAD, "9f0c")),
        note="<p>Quote</p>\nmaillink-id: gmail:abc:&lt;m1@example.com&gt;",
    )
    stored = draft_to_json(draft)
    assert set(stored) == {f.name for f in dataclasses.fields(ActivityDraft)}
    assert draft_from_json(stored) == draft
