"""The CRM mirror: filled by listing the Pipedrive sandbox over real HTTP, kept by polling and
webhooks, shared by every process of a store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import openapi_check
from maillink.crm.base import Listing
from maillink.crm.mirror import COMPLETE, TOO_BIG, MirroredCRM, MirrorState
from maillink.crm.pipedrive import PipedriveCRM
from maillink.model import ItemKind, ItemStatus
from maillink.ops.webhooks import forget, pipedrive_change
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.store import Store, cache
from maillink.store.mirror import MirrorTables
from maillink.sync import poll_crm_changes

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
READS = ("persons.search", "deals.list", "leads.list", "deals.archived", "leads.archived")


class Clock:
    """The time of the sandbox and of the mirror, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def server(clock: Clock) -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox(clock=clock) as running:
        yield running


@pytest.fixture
def sandbox(server: PipedriveSandbox, clock: Clock) -> PipedriveSandbox:
    clock.now = T0
    server.reset()
    server.burst_per_2s = server.daily_token_budget = None
    return server


def adapter(sandbox: PipedriveSandbox) -> PipedriveCRM:
    return PipedriveCRM(sandbox.url, api_token=sandbox.api_token)


def mirrored(sandbox: PipedriveSandbox, store: Store, clock: Clock, **options: Any) -> MirroredCRM:
    options.setdefault("max_records", 1000)
    return MirroredCRM(adapter(sandbox), MirrorTables(store), now=clock, **options)


def seed(sandbox: PipedriveSandbox) -> dict[str, Any]:
    """Ann (two addresses) with an open deal, a won deal and a lead; Bob with nothing."""
    ann = sandbox.add_person("Ann Lee", ["Ann@Customer.example", "ann.lee@customer.example"])
    bob = sandbox.add_person("Bob Roe", ["bob@other.example"])
    open_deal = sandbox.add_deal("Ann 40 seats", ann, add_time=T0 - timedelta(days=30))
    won_deal = sandbox.add_deal(
        "Ann pilot",
        ann,
        add_time=T0 - timedelta(days=60),
        status="won",
        close_time=T0 - timedelta(days=40),
    )
    lead = sandbox.add_lead("Ann upsell", ann, add_time=T0 - timedelta(days=10))
    return {"ann": ann, "bob": bob, "open": open_deal, "won": won_deal, "lead": lead}


def reads(sandbox: PipedriveSandbox) -> int:
    return sum(sandbox.meter.requests[op] for op in READS)


def by_ref(items: Any) -> dict[str, tuple[ItemStatus, Any]]:
    return {str(i.ref): (i.status, i.closed_at) for i in items}


def webhook(conn: Any, when: datetime, entity: str, action: str, data: Any, **meta: Any) -> None:
    """What the daemon's ops server does with a Pipedrive webhook v2 received at `when`."""
    payload = {"meta": {"entity": entity, "action": action, **meta}, "data": data}
    change = pipedrive_change(payload)
    assert change is not None
    forget(conn, change, when)


def test_a_filled_mirror_answers_new_addresses_without_crm_reads(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    assert crm.refresh().listed == 5  # 2 persons, 2 deals, 1 lead: one page each
    sandbox.meter.reset()

    found = crm.search_persons("ANN.lee@customer.example")
    items = crm.items_of_person(ids["ann"])

    assert reads(sandbox) == 0
    assert [(p.id, p.name) for p in found] == [(ids["ann"], "Ann Lee")]
    assert set(found[0].emails) == {"ann@customer.example", "ann.lee@customer.example"}
    assert by_ref(items) == by_ref(adapter(sandbox).items_of_person(ids["ann"]))
    assert {i.ref.kind for i in items} == {ItemKind.DEAL, ItemKind.LEAD}


def test_an_address_the_mirror_does_not_know_is_searched_with_its_items(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    crm.refresh()
    assert crm.search_persons("cold@nowhere.example") == []
    newer = sandbox.add_person("Eve", ["eve@customer.example"])  # after the last refresh
    sandbox.add_deal("Eve deal", newer, add_time=T0)
    sandbox.meter.reset()

    assert [p.id for p in crm.search_persons("eve@customer.example")] == [newer]
    assert len(crm.items_of_person(newer)) == 1
    assert sandbox.meter.requests["persons.search"] == 1
    assert sandbox.meter.requests["deals.list"] == 1


def test_above_the_threshold_new_addresses_are_searched_as_before(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock, max_records=3)
    assert crm.refresh().listed == 4  # stopped at the first record past the limit
    assert MirrorState.from_text(MirrorTables(store).state()).status == TOO_BIG
    sandbox.meter.reset()

    assert [p.id for p in crm.search_persons("ann@customer.example")] == [ids["ann"]]
    crm.items_of_person(ids["ann"])
    assert sandbox.meter.requests["persons.search"] == 1
    assert sandbox.meter.requests["deals.list"] == 1
    # Not counted again before `full_every`: a poll costs what it cost without the mirror.
    sandbox.meter.reset()
    assert crm.refresh().listed is None
    assert sandbox.meter.requests["persons.list"] == 0


def test_a_mirror_turned_off_never_lists(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    seed(sandbox)
    crm = mirrored(sandbox, store, clock, max_records=0)
    assert crm.refresh().listed is None
    crm.search_persons("ann@customer.example")
    assert sandbox.meter.requests["persons.list"] == 0
    assert sandbox.meter.requests["persons.search"] == 1


def test_a_deal_won_and_an_address_changed_reach_the_mirror_through_polling(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    poll_crm_changes(store, crm, now=clock())  # the first poll starts the polling
    poll_crm_changes(store, crm, now=clock())  # the next ones fill the mirror, then keep it
    assert MirrorState.from_text(MirrorTables(store).state()).status == COMPLETE
    with store.transaction() as conn:  # what the linker cached meanwhile
        cache.put_items(conn, {ids["ann"]: crm.items_of_person(ids["ann"])}, clock())

    won_at = clock.advance(minutes=5)
    sandbox.set_deal_status(ids["open"], "won", won_at)
    sandbox.update_person(ids["bob"], emails=["bob@new.example"], at=won_at)
    clock.advance(minutes=5)
    assert poll_crm_changes(store, crm, now=clock()) >= 2
    sandbox.meter.reset()

    assert by_ref(crm.items_of_person(ids["ann"]))[f"deal:{ids['open']}"] == (
        ItemStatus.WON,
        won_at,
    )
    assert [p.id for p in crm.search_persons("bob@new.example")] == [ids["bob"]]
    assert reads(sandbox) == 0
    assert MirrorTables(store).persons("bob@other.example") == []
    with store.engine.connect() as conn:  # the poll forgot the cached items it changed
        assert cache.fresh_items(conn, [ids["ann"]], clock(), timedelta(hours=1)) == {}


def test_archived_deals_and_leads_leave_the_mirror_through_polling(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    crm.refresh()
    at = clock.advance(minutes=5)
    sandbox.archive_deal(ids["open"], at)
    sandbox.archive_lead(ids["lead"], at)
    clock.advance(minutes=5)
    changes = crm.changes_since(at - timedelta(minutes=1))

    assert ids["ann"] in changes.person_ids
    left = by_ref(crm.items_of_person(ids["ann"]))
    assert left == by_ref(adapter(sandbox).items_of_person(ids["ann"]))
    assert set(left) == {f"deal:{ids['won']}"}


def test_a_webhook_sends_reads_to_the_crm_until_a_refresh_has_read_the_change(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    crm.refresh()
    won_at = clock.advance(minutes=1)
    sandbox.set_deal_status(ids["open"], "won", won_at)
    with store.transaction() as conn:
        webhook(
            conn,
            won_at,
            "deal",
            "change",
            {"id": ids["open"], "person_id": ids["ann"], "status": "won"},
            entity_id=str(ids["open"]),
        )
    sandbox.meter.reset()

    status = by_ref(crm.items_of_person(ids["ann"]))[f"deal:{ids['open']}"][0]
    assert status is ItemStatus.WON
    assert sandbox.meter.requests["deals.list"] == 1  # asked the CRM, not the mirror

    clock.advance(minutes=1)
    crm.refresh()
    sandbox.meter.reset()
    status = by_ref(crm.items_of_person(ids["ann"]))[f"deal:{ids['open']}"][0]
    assert status is ItemStatus.WON
    assert reads(sandbox) == 0


def test_a_person_deleted_in_the_crm_leaves_the_mirror_with_its_webhook(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    crm.refresh()
    with sandbox.records.lock:
        del sandbox.records.persons[ids["bob"]]  # Pipedrive's listings no longer show it
    with store.transaction() as conn:
        webhook(conn, clock(), "person", "delete", None, entity_id=str(ids["bob"]))
    clock.advance(minutes=1)
    crm.refresh()

    assert MirrorTables(store).persons("bob@other.example") == []
    assert crm.search_persons("bob@other.example") == []


def test_a_write_naming_a_gone_person_sets_the_mirror_aside_until_listed_whole(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    crm.refresh()
    with sandbox.records.lock:
        del sandbox.records.persons[ids["bob"]]  # deleted, and its webhook was missed
    crm.forget_cached()  # what the outbox does on CRMRecordGone
    sandbox.meter.reset()

    assert crm.search_persons("bob@other.example") == []
    assert sandbox.meter.requests["persons.search"] == 1

    clock.advance(minutes=1)
    assert crm.refresh().full
    sandbox.meter.reset()
    assert MirrorTables(store).persons("bob@other.example") == []
    assert [p.id for p in crm.search_persons("ann@customer.example")] == [ids["ann"]]
    assert reads(sandbox) == 0


def test_a_mirror_older_than_its_max_age_refreshes_before_it_answers(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    crm = mirrored(sandbox, store, clock, max_age=timedelta(minutes=10))
    crm.refresh()
    carl_at = clock.advance(minutes=30)
    carl = sandbox.add_person("Carl", ["carl@customer.example"])
    sandbox.add_deal("Carl deal", carl, add_time=carl_at)
    sandbox.meter.reset()

    assert [p.id for p in crm.search_persons("carl@customer.example")] == [carl]
    assert sandbox.meter.requests["persons.search"] == 0
    assert sandbox.meter.requests["persons.list"] == 1  # one incremental listing
    assert len(crm.items_of_person(carl)) == 1
    assert len(crm.items_of_person(ids["ann"])) == 3


def test_a_person_maillink_creates_is_in_the_mirror_at_once(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    crm.refresh()
    created = crm.create_person("Dana", "dana@new.example")
    sandbox.meter.reset()
    assert [p.id for p in crm.search_persons("dana@new.example")] == [created.id]
    assert reads(sandbox) == 0


def test_two_refreshes_at_once_on_postgresql_leave_one_mirror(
    sandbox: PipedriveSandbox, pg_url: str, clock: Clock
) -> None:
    ids = seed(sandbox)
    stores = [Store.open(pg_url), Store.open(pg_url)]
    both_listed = threading.Barrier(2, timeout=20)

    class Waiting(PipedriveCRM):
        def list_records(self, since: datetime | None, limit: int) -> Listing:
            listing = super().list_records(since, limit)
            both_listed.wait()  # both have listed before either writes
            return listing

    crms = [
        MirroredCRM(
            Waiting(sandbox.url, api_token=sandbox.api_token),
            MirrorTables(s),
            max_records=1000,
            now=clock,
        )
        for s in stores
    ]
    outcomes: list[Any] = []
    threads = [threading.Thread(target=lambda c=c: outcomes.append(c.refresh())) for c in crms]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(o.listed is None for o in outcomes) == [False, True]
        assert [p.id for p in crms[1].search_persons("ann@customer.example")] == [ids["ann"]]
        assert len(crms[0].items_of_person(ids["ann"])) == 3
    finally:
        for s in stores:
            s.close()


def test_the_mirror_listings_ask_what_the_spec_allows_and_page_through(
    sandbox: PipedriveSandbox, clock: Clock
) -> None:
    for n in range(3):
        pid = sandbox.add_person(f"P{n}", [f"p{n}@customer.example"])
        sandbox.add_deal(f"D{n}", pid, add_time=T0)
        sandbox.add_lead(f"L{n}", pid, add_time=T0)
    crm = adapter(sandbox)
    full = crm.list_records(None, 1000)
    since = crm.list_records(T0 - timedelta(hours=1), 1000)

    assert (len(full.persons), len(full.items), full.records) == (3, 6, 9)
    assert since.records == 9 and since.whole == frozenset({ItemKind.LEAD})
    operations = {received.operation for received in sandbox.received}
    assert operations >= {"persons.list", "deals.list", "leads.list", "deals.archived"}
    for received in sandbox.received:
        allowed = openapi_check.query_parameters(received.path, received.method)
        assert set(received.query) <= allowed, (received.operation, received.query)
        assert received.query.get("limit") == "500"


class CountedTables(MirrorTables):
    """The store's mirror tables, counting the state reads."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.state_reads = 0

    def state(self) -> str | None:
        self.state_reads += 1
        return super().state()


def test_reads_share_one_state_read_for_a_moment_and_still_see_webhooks(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    rows = CountedTables(store)
    crm = MirroredCRM(adapter(sandbox), rows, max_records=1000, now=clock)
    crm.refresh()
    rows.state_reads = 0

    for _ in range(3):
        crm.search_persons("ann@customer.example")
        crm.items_of_person(ids["ann"])
    assert rows.state_reads == 1
    with store.transaction() as conn:  # a webhook, within the moment: seen at the next read
        ann = {"id": ids["ann"], "emails": [{"value": "ann@customer.example"}]}
        webhook(conn, clock(), "person", "change", ann, entity_id=str(ids["ann"]))
    sandbox.meter.reset()
    assert [p.id for p in crm.search_persons("ann@customer.example")] == [ids["ann"]]
    assert sandbox.meter.requests["persons.search"] == 1
    assert rows.state_reads == 1

    clock.advance(seconds=2)
    crm.items_of_person(ids["bob"])
    assert rows.state_reads == 2


def test_this_process_setting_the_mirror_aside_is_seen_at_once(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    seed(sandbox)
    crm = mirrored(sandbox, store, clock)
    crm.refresh()
    assert crm.search_persons("bob@other.example") != []
    crm.forget_cached()
    sandbox.meter.reset()

    crm.search_persons("bob@other.example")
    assert sandbox.meter.requests["persons.search"] == 1
    crm.refresh()  # a full listing: usable again, at once
    sandbox.meter.reset()
    crm.search_persons("bob@other.example")
    assert reads(sandbox) == 0


def test_an_address_marked_stale_is_told_apart_from_an_unknown_one(
    sandbox: PipedriveSandbox, store: Store, clock: Clock
) -> None:
    ids = seed(sandbox)
    mirrored(sandbox, store, clock).refresh()
    tables = MirrorTables(store)
    with store.transaction() as conn:
        bob = {"id": ids["bob"], "emails": [{"value": "bob@other.example"}]}
        webhook(conn, clock(), "person", "change", bob, entity_id=str(ids["bob"]))

    assert tables.persons("nobody@customer.example") == []
    assert [p.id for p in tables.persons("ann.lee@customer.example") or []] == [ids["ann"]]
    assert tables.persons("bob@other.example") is None
