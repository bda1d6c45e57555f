"""The fact rule 6 needs for deleted items: which items each email's activity already carries
in the CRM, read from the outbox by the linker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert

from maillink.model import ItemRef
from maillink.store import Store
from maillink.store.activity_claims import delivered_links as _delivered_links
from maillink.store.schema import activities

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _row(key: str, items: list[str], crm_id: str | None, desired: int, delivered: int) -> Any:
    return {
        "key": key,
        "owner_message_id": None,
        "desired": {"key": key, "items": items, "person_ids": [1]},
        "desired_version": desired,
        "delivered_version": delivered,
        "crm_id": crm_id,
        "attempts": 0,
        "updated_at": NOW,
    }


def test_only_activities_the_crm_has_at_their_latest_version_count(sqlite_store: Store) -> None:
    with sqlite_store.transaction() as conn:
        conn.execute(
            insert(activities),
            [
                _row("delivered@x", ["deal:6"], "101", 1, 1),
                _row("persons-only@x", [], "102", 2, 2),
                _row("pending-update@x", ["deal:6"], "103", 2, 1),  # the CRM has version 1
                _row("never-created@x", ["deal:6"], None, 1, 0),
                _row("other-thread@x", ["deal:7"], "104", 1, 1),
            ],
        )
    wanted = ["delivered@x", "persons-only@x", "pending-update@x", "never-created@x", "none@x"]
    with sqlite_store.engine.connect() as conn:
        found = _delivered_links(conn, wanted)
    assert found == {
        "delivered@x": frozenset({ItemRef.parse("deal:6")}),
        "persons-only@x": frozenset(),
    }
