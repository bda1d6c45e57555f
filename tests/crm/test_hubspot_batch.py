"""HubSpot's batch reads and writes as the linker and the outbox use them, over real HTTP against
the HubSpot sandbox: one request for many addresses, persons or emails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tests.crm.hubspot_support import Clock, draft, sandbox_fixtures

from maillink.crm.base import BatchLookup, BatchWrites, CRMRecordGone
from maillink.crm.hubspot import HubSpotCRM, WriteOutcomeUnknown
from maillink.linking.linker import CacheTTL, FactGatherer
from maillink.model import ItemKind, ItemRef
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.store import Store

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0 = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
CREATE = r"^/crm/v3/objects/emails/batch/create$"
CREATE_PATH = "/crm/v3/objects/emails/batch/create"


clock, server, sandbox = sandbox_fixtures(NOW)


@pytest.fixture
def crm(sandbox: HubSpotSandbox) -> HubSpotCRM:
    return HubSpotCRM(sandbox.url, access_token=sandbox.access_token, sleep=lambda _: None)


def sent(sandbox: HubSpotSandbox) -> list[str]:
    """The paths of the requests the sandbox answered, in order."""
    return [r.path for r in sandbox.received]


def test_the_hubspot_adapter_offers_batch_reads_and_writes(crm: HubSpotCRM) -> None:
    assert isinstance(crm, BatchLookup) and isinstance(crm, BatchWrites)
    assert crm.max_batch == 100


def test_the_fact_gatherer_reads_many_addresses_and_their_items_in_one_batch_each(
    sandbox: HubSpotSandbox, crm: HubSpotCRM, sqlite_store: Store, clock: Clock
) -> None:
    contacts = [sandbox.add_contact(f"c{n}@customer.example", f"C{n}") for n in range(30)]
    deals = [sandbox.add_deal(f"Deal {n}", c, add_time=T0) for n, c in enumerate(contacts)]
    wanted = [f"c{n}@customer.example" for n in range(30)] + ["nobody@cold.example"]
    gatherer = FactGatherer(sqlite_store, crm, CacheTTL(), clock=clock)

    facts = gatherer.gather(wanted)

    assert {e: [p.id for p in ps] for e, ps in facts.persons_by_email.items()} == {
        **{f"c{n}@customer.example": [c] for n, c in enumerate(contacts)},
        "nobody@cold.example": [],
    }
    assert {pid: [i.ref.id for i in found] for pid, found in facts.items_by_person.items()} == {
        c: [str(d)] for c, d in zip(contacts, deals, strict=True)
    }
    assert sent(sandbox) == [
        "/crm/v3/objects/contacts/batch/read",  # 31 addresses
        "/crm/v3/objects/contacts/search",  # the one no primary address matched
        "/crm/v4/associations/contacts/deals/batch/read",  # 30 persons
        "/crm/v4/associations/contacts/leads/batch/read",
        "/crm/v3/objects/deals/batch/read",  # 30 deals
    ]

    sandbox.received.clear()
    again = gatherer.gather(wanted)  # within the caches' TTLs: nothing is read
    assert sent(sandbox) == []
    assert again.persons_by_email == facts.persons_by_email

    clock.now += timedelta(minutes=11)  # past the items' TTL, within the persons'
    gatherer.gather(wanted)
    assert "/crm/v3/objects/contacts/batch/read" not in sent(sandbox)
    assert sent(sandbox).count("/crm/v3/objects/deals/batch/read") == 1


def test_a_batch_of_emails_is_one_request_matched_by_key_not_position(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann")
    deal = sandbox.add_deal("Renewal", ann, add_time=T0)
    drafts = [draft(n, ann, ItemRef(ItemKind.DEAL, str(deal))) for n in range(5)]

    ids = crm.create_activities(drafts)

    assert sent(sandbox) == ["/crm/v3/objects/emails/batch/create"]
    stored = {str(e["id"]): e["properties"]["maillink_key"] for e in sandbox.emails()}
    assert {i: stored[str(i)] for i in ids} == {ids[n]: d.key for n, d in enumerate(drafts)}
    assert all(sandbox.associated_ids("emails", int(str(i)), "deals") == [deal] for i in ids)


def test_more_than_a_hundred_emails_take_one_request_a_hundred(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann")
    ids = crm.create_activities([draft(n, ann) for n in range(150)])
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 150
    assert sent(sandbox) == ["/crm/v3/objects/emails/batch/create"] * 2


def test_a_batch_refused_whole_for_one_draft_delivers_the_others(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann")
    gone = sandbox.add_deal("Deleted since", ann, add_time=T0)
    sandbox.archive("deals", gone)
    drafts = [draft(n, ann) for n in range(7)]
    drafts[4] = draft(4, ann, ItemRef(ItemKind.DEAL, str(gone)))

    outcomes = crm.create_activities(drafts)

    refused = outcomes.pop(4)
    assert isinstance(refused, CRMRecordGone) and (refused.kind, refused.record_id) == (
        "deal",
        str(gone),
    )
    assert all(isinstance(o, str) for o in outcomes)
    keys = sorted(e["properties"]["maillink_key"] for e in sandbox.emails())
    assert keys == sorted(d.key for n, d in enumerate(drafts) if n != 4)
    # HubSpot named the gone deal: the drafts naming it are refused, the others sent once more.
    assert sent(sandbox) == [CREATE_PATH, CREATE_PATH]


def test_a_batch_refused_for_a_merged_away_contact_refuses_each_draft_naming_it_at_once(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann")
    kept = sandbox.add_contact("ann.lee@example.com", "Ann Lee")
    bob = sandbox.add_contact("bob@example.org", "Bob")
    drafts = [draft(n, ann if n % 2 else bob) for n in range(6)]
    sandbox.before_next(CREATE, lambda: sandbox.merge_contacts(ann, into=kept))

    outcomes = crm.create_activities(drafts)

    for n, outcome in enumerate(outcomes):
        if n % 2:
            assert isinstance(outcome, CRMRecordGone)
            assert (outcome.kind, outcome.record_id) == ("person", str(ann))
        else:
            assert isinstance(outcome, str)
    assert sent(sandbox) == [CREATE_PATH, CREATE_PATH]  # not one request per draft
    assert sorted(e["associations"]["contacts"][0] for e in sandbox.emails()) == [bob] * 3


def test_a_batch_refused_for_another_reason_is_sent_again_in_halves(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann")
    sandbox.inject_server_error(CREATE, status=400, times=1)  # not naming any record

    outcomes = crm.create_activities([draft(n, ann) for n in range(4)])

    assert all(isinstance(o, str) for o in outcomes)
    assert sandbox.meter.statuses[400] == 1  # refused whole…
    assert sent(sandbox) == [CREATE_PATH] * 2  # …then each half is taken


def test_a_lost_batch_answer_is_found_again_by_key_in_one_read_without_duplicates(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann")
    drafts = [draft(n, ann) for n in range(5)]
    sandbox.lose_next_response(CREATE)

    ids = crm.create_activities(drafts)

    assert sent(sandbox) == [
        "/crm/v3/objects/emails/batch/create",
        "/crm/v3/objects/emails/batch/read",
    ]
    assert sorted(ids, key=str) == sorted((str(e["id"]) for e in sandbox.emails()), key=str)
    assert len(sandbox.emails()) == 5


def test_a_lost_answer_whose_lookup_fails_too_stays_unknown_for_each_draft(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann")
    sandbox.lose_next_response(CREATE)
    sandbox.inject_server_error(r"^/crm/v3/objects/emails/batch/read$", times=10)

    outcomes = crm.create_activities([draft(n, ann) for n in range(3)])

    assert all(isinstance(o, WriteOutcomeUnknown) for o in outcomes)
    assert len(sandbox.emails()) == 3  # created once; the outbox looks them up before a create
