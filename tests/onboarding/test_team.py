"""sync_members: a team connection's mailboxes follow the directory, on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maillink.app import App
from maillink.config import load_settings
from maillink.onboarding.team import LEFT_DIRECTORY, Member, sync_members
from maillink.store import accounts
from maillink.store.schema import leases


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'maillink.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    config = tmp_path / "maillink.toml"
    config.write_text(
        f'[store]\nurl = {json.dumps(url)}\n\n[crm]\nkind = "pipedrive"\n'
        'base_url = "https://example.pipedrive.com"\n'
    )
    opened = App(load_settings(config, env={}))
    yield opened
    opened.close()


def team(*names: str) -> list[Member]:
    return [Member(f"{n}@contoso.example", f"id-{n}") for n in names]


def by_email(app: App) -> dict[str, accounts.Account]:
    return {a.email: a for a in app.store_accounts(active_only=False)}


def test_new_members_are_added_without_a_token_and_due_at_once(app: App) -> None:
    report = sync_members(app, "microsoft", "tenant", [Member("Ann@Contoso.example", "u1")])
    assert report.added == ["ann@contoso.example"] and report.kept == 0
    ann = by_email(app)["ann@contoso.example"]
    assert (ann.provider, ann.connected_via, ann.directory_id) == ("microsoft", "tenant", "u1")
    assert ann.token is None and ann.status == accounts.ACTIVE
    with app.store.engine.connect() as conn:
        due = conn.execute(leases.select().where(leases.c.account_id == ann.id)).one()
    assert due.next_run_at.year == 1970


def test_a_member_who_leaves_is_paused_and_resumed_when_back(app: App) -> None:
    sync_members(app, "microsoft", "tenant", team("ann", "bob"))
    left = sync_members(app, "microsoft", "tenant", team("ann"))
    assert left.paused == ["bob@contoso.example"] and left.kept == 1
    bob = by_email(app)["bob@contoso.example"]
    assert bob.status == accounts.PAUSED and bob.last_error == LEFT_DIRECTORY
    again = sync_members(app, "microsoft", "tenant", team("ann"))
    assert (again.paused, again.resumed, again.kept) == ([], [], 1)
    back = sync_members(app, "microsoft", "tenant", team("ann", "bob"))
    assert back.resumed == ["bob@contoso.example"] and back.added == []
    assert by_email(app)["bob@contoso.example"].status == accounts.ACTIVE


def test_a_mailbox_a_person_paused_stays_paused(app: App) -> None:
    sync_members(app, "microsoft", "tenant", team("ann"))
    with app.store.transaction() as conn:
        accounts.set_status(conn, by_email(app)["ann@contoso.example"].id, accounts.PAUSED)
    report = sync_members(app, "microsoft", "tenant", team("ann"))
    assert report.resumed == [] and report.kept == 1
    assert by_email(app)["ann@contoso.example"].status == accounts.PAUSED


def test_user_connected_mailboxes_and_other_connections_are_left_alone(app: App) -> None:
    with app.store.transaction() as conn:
        accounts.upsert(conn, "rep@contoso.example", "microsoft", "secret", "Mail.ReadBasic")
        accounts.upsert(conn, "ann@contoso.example", "microsoft", "secret", "Mail.ReadBasic")
    sync_members(app, "gmail", "domain", [Member("gm@contoso.example", "g1")])
    report = sync_members(app, "microsoft", "tenant", team("ann", "bob"))
    assert report.added == ["bob@contoso.example"] and report.kept == 1
    assert by_email(app)["ann@contoso.example"].connected_via == "user"
    emptied = sync_members(app, "microsoft", "tenant", [])
    assert emptied.paused == ["bob@contoso.example"]
    found = by_email(app)
    assert found["rep@contoso.example"].status == accounts.ACTIVE
    assert found["ann@contoso.example"].status == accounts.ACTIVE
    assert found["gm@contoso.example"].status == accounts.ACTIVE


def test_a_changed_directory_id_is_kept(app: App) -> None:
    sync_members(app, "microsoft", "tenant", [Member("ann@contoso.example", "old")])
    sync_members(app, "microsoft", "tenant", [Member("ann@contoso.example", "new")])
    assert by_email(app)["ann@contoso.example"].directory_id == "new"


def test_only_team_connections_are_synced(app: App) -> None:
    with pytest.raises(ValueError):
        sync_members(app, "microsoft", "user", team("ann"))


def test_one_daemon_of_several_claims_the_daily_refresh(app: App) -> None:
    start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    day = timedelta(days=1)
    with app.store.transaction() as conn:
        assert accounts.claim_team_refresh(conn, start, day)  # the first daemon to look
    with app.store.transaction() as conn:
        assert not accounts.claim_team_refresh(conn, start + timedelta(hours=1), day)
    later = start + day
    with app.store.transaction() as conn:
        first = accounts.claim_team_refresh(conn, later, day)
        second = accounts.claim_team_refresh(conn, later + timedelta(seconds=1), day)
    assert (first, second) == (True, False)


def test_a_member_needing_reauthorisation_is_active_again_after_a_listing(app: App) -> None:
    sync_members(app, "microsoft", "tenant", team("ann"))
    with app.store.transaction() as conn:
        ann = by_email(app)["ann@contoso.example"]
        accounts.set_status(conn, ann.id, accounts.NEEDS_REAUTH, "invalid_client")
    report = sync_members(app, "microsoft", "tenant", team("ann"))
    assert report.resumed == ["ann@contoso.example"]
    assert by_email(app)["ann@contoso.example"].status == accounts.ACTIVE


def test_a_rep_connecting_a_team_mailbox_makes_it_their_own(app: App) -> None:
    sync_members(app, "microsoft", "tenant", team("ann"))
    with app.store.transaction() as conn:
        accounts.upsert(conn, "ann@contoso.example", "microsoft", "secret", "Mail.ReadBasic")
    assert by_email(app)["ann@contoso.example"].connected_via == "user"
    assert sync_members(app, "microsoft", "tenant", []).paused == []
