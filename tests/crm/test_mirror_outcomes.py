"""The mirror changes what maillink reads, never what it decides: the same mailbox backfilled with
and without it gets the same decisions, for far fewer Pipedrive reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.mailbox import DOMAIN, generate_mailbox
from sqlalchemy import select
from tests.e2e.support import connect

from maillink.app import App
from maillink.config import load_settings
from maillink.crm.mirror import MirroredCRM
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace
from maillink.store.schema import messages
from maillink.sync import refresh_crm_mirror

SEARCHES_AND_LISTS = ("persons.search", "deals.list", "leads.list")


def _backfill(folder: Path, google: Any, pipedrive: Any, rep: str, mirror: int) -> dict[str, Any]:
    """Backfill `rep` in a workspace of its own; each message's decision by its key."""
    folder.mkdir(parents=True, exist_ok=True)
    config = write_workspace(folder, google, pipedrive, internal_domains=[DOMAIN])
    text = config.read_text().replace("[crm]\n", f"[crm]\nmirror_max_records = {mirror}\n", 1)
    config.write_text(text)
    app = App(load_settings(config, env={}))
    try:
        assert isinstance(app.crm, MirroredCRM) == (mirror > 0)
        connect(app, google, rep)
        refresh_crm_mirror(app.crm)  # what `maillink backfill` does first
        syncer = app.syncer()
        for account in app.store_accounts():
            assert syncer.backfill(account, app.provider_for(account)).error is None
        with app.store.engine.connect() as conn:
            rows = conn.execute(
                select(
                    messages.c.key, messages.c.reason, messages.c["items"], messages.c.person_ids
                )
            ).all()
    finally:
        app.close()
    return {
        row.key: (
            row.reason,
            json.dumps(row._mapping["items"]),
            json.dumps(sorted(row.person_ids)),
        )
        for row in rows
    }


def test_a_mailbox_gets_the_same_decisions_with_and_without_the_mirror(tmp_path: Path) -> None:
    with GoogleSandbox() as google, PipedriveSandbox() as pipedrive:
        made = generate_mailbox(google, pipedrive, messages=300, seed=7, messages_per_contact=9)
        pipedrive.meter.reset()
        searched = _backfill(tmp_path / "without", google, pipedrive, made.rep, 0)
        reads_without = sum(pipedrive.meter.requests[op] for op in SEARCHES_AND_LISTS)
        with pipedrive.records.lock:
            pipedrive.records.activities.clear()  # the second store writes them again
        pipedrive.meter.reset()
        mirrored = _backfill(tmp_path / "with", google, pipedrive, made.rep, 20_000)
        reads_with = sum(pipedrive.meter.requests[op] for op in SEARCHES_AND_LISTS)

    assert len(searched) == made.messages
    assert mirrored == searched
    assert {reason for reason, _, _ in searched.values()} >= {
        "single_open_item",
        "no_known_contact",
    }
    # Only the addresses the CRM does not know are still searched; no person's items are read.
    assert reads_with < reads_without / 2
