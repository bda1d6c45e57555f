"""The HubSpot adapter against the HubSpot sandbox, over real HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.crm.hubspot_support import Clock, sandbox_fixtures

import hubspot_openapi_check as spec_check
from maillink.app import App
from maillink.config import load_settings
from maillink.crm.activity import draft_for
from maillink.crm.base import (
    ActivityDraft,
    CRMActivityGone,
    CRMAuthError,
    CRMRateLimited,
    CRMRecordGone,
)
from maillink.crm.hubspot import HubSpotCRM
from maillink.crm.hubspot_http import WriteOutcomeUnknown, check_base_url
from maillink.errors import ConfigError
from maillink.model import Address, Direction, ItemKind, ItemRef, ItemStatus, Message
from maillink.sandbox.hubspot import HubSpotSandbox

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
T0 = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)
SENT = datetime(2025, 5, 1, 14, 5, tzinfo=UTC)


clock, server, sandbox = sandbox_fixtures(NOW, unlimited=True)


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def crm(sandbox: HubSpotSandbox, waits: list[float]) -> HubSpotCRM:
    return HubSpotCRM(
        sandbox.url, access_token=sandbox.access_token, sleep=waits.append, now=lambda: NOW
    )


def message(key: str, direction: Direction = Direction.INBOUND) -> Message:
    ann = Address("ann@example.com", "Ann Lee")
    alice = Address("alice@acme.example", "Alice Rep")
    inbound = direction is Direction.INBOUND
    return Message(
        account="alice@acme.example",
        provider_id=key,
        thread_key="t1",
        message_id=key,
        date=SENT,
        direction=direction,
        sender=ann if inbound else alice,
        to=(alice,) if inbound else (ann,),
        cc=(Address("bob@example.org"),),
        subject="Quote for 40 seats",
        snippet="Here is the quote",
    )


def draft(key: str, person_ids: tuple[int, ...], *items: ItemRef, **kw: Any) -> ActivityDraft:
    direction = kw.pop("direction", Direction.INBOUND)
    return draft_for(message(key, direction), person_ids, items, **kw)


def deal(deal_id: int) -> ItemRef:
    return ItemRef(ItemKind.DEAL, str(deal_id))


def lead(lead_id: int) -> ItemRef:
    return ItemRef(ItemKind.LEAD, str(lead_id))


def spec_problems(sandbox: HubSpotSandbox) -> list[str]:
    """What HubSpot's specs refuse in the requests the adapter sent (pipelines: no spec)."""
    problems = []
    for sent in sandbox.received:
        if sent.path.startswith("/crm/v3/pipelines"):
            continue
        if sent.body is not None:
            found = spec_check.request_errors(sent.path, sent.method, sent.body)
            problems += [f"{sent.method} {sent.path}: {p}" for p in found]
        unknown = set(sent.query) - spec_check.query_parameters(sent.path, sent.method)
        problems += [f"{sent.method} {sent.path}: query {q}" for q in sorted(unknown)]
    return problems


# -- persons -----------------------------------------------------------------------------------


def test_contact_is_found_by_primary_address_whatever_its_case(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact(
        "Ann@Example.com", "Ann", "Lee", additional_emails=["ann@home.example"]
    )
    [person] = crm.search_persons("ANN@example.com")
    assert (person.id, person.name) == (ann, "Ann Lee")
    assert person.emails == ("ann@example.com", "ann@home.example")
    assert person.organization_id is None
    assert crm.requests_made == 1  # one batch read, no search
    acme = sandbox.add_company("Example Inc")
    sandbox.add_contact("bob@example.org", company_id=acme)
    assert crm.search_persons("bob@example.org")[0].organization_id == str(acme)
    assert spec_problems(sandbox) == []


def test_contact_is_found_by_a_secondary_address_through_search(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com", "Ann", additional_emails=["Ann.Lee@Home.example"])
    assert [p.id for p in crm.search_persons("ann.lee@home.example")] == [ann]
    assert crm.search_persons("nobody@example.com") == []
    assert spec_problems(sandbox) == []


def test_many_addresses_are_matched_by_address_not_by_the_answers_order(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ids = {f"p{n}@example.com": sandbox.add_contact(f"p{n}@example.com") for n in range(5)}
    bob = sandbox.add_contact("bob@example.org", additional_emails=["bob@home.example"])
    wanted = [*ids, "bob@home.example", "nobody@example.com"]
    found = crm.search_many(wanted)
    assert {e: [p.id for p in ps] for e, ps in found.items()} == {
        **{e: [i] for e, i in ids.items()},
        "bob@home.example": [bob],
        "nobody@example.com": [],
    }
    assert crm.requests_made == 2  # one batch read of 7 addresses, one search of 2


# -- items -------------------------------------------------------------------------------------


def test_deals_and_leads_come_with_their_status_and_dates(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    bob = sandbox.add_contact("bob@example.org")
    open_deal = sandbox.add_deal("Open", ann, add_time=T0, expected_close=NOW + timedelta(30))
    won = sandbox.add_deal("Won", ann, add_time=T0, status="won", close_time=T0 + timedelta(9))
    lost = sandbox.add_deal("Lost", ann, add_time=T0, status="lost", close_time=T0 + timedelta(5))
    open_lead = sandbox.add_lead("Lead", ann, add_time=T0 + timedelta(1))
    dropped = sandbox.add_lead("Dropped", ann, add_time=T0, archived_at=T0 + timedelta(3))
    sandbox.add_deal("Bob's", bob, add_time=T0)
    items = {str(i.ref): i for i in crm.items_of_person(ann)}
    assert {ref: (i.status, i.closed_at) for ref, i in items.items()} == {
        f"deal:{open_deal}": (ItemStatus.OPEN, None),
        f"deal:{won}": (ItemStatus.WON, T0 + timedelta(9)),
        f"deal:{lost}": (ItemStatus.LOST, T0 + timedelta(5)),
        f"lead:{open_lead}": (ItemStatus.OPEN, None),
        f"lead:{dropped}": (ItemStatus.CLOSED, T0 + timedelta(3)),
    }
    assert items[f"deal:{won}"].created_at == T0 and items[f"deal:{won}"].title == "Won"
    assert items[f"lead:{open_lead}"].created_at == T0 + timedelta(1)
    assert all(i.person_ids == {ann} for i in items.values())
    assert crm.archived_items_of_person(ann) == []
    assert spec_problems(sandbox) == []


def test_an_archived_deal_is_never_an_item(sandbox: HubSpotSandbox, crm: HubSpotCRM) -> None:
    ann = sandbox.add_contact("ann@example.com")
    kept = sandbox.add_deal("Kept", ann, add_time=T0)
    gone = sandbox.add_deal("Gone", ann, add_time=T0)
    sandbox.set_deal_status(gone, "deleted", at=NOW - timedelta(days=1))
    assert [i.ref for i in crm.items_of_person(ann)] == [deal(kept)]


def test_a_contact_without_deals_or_leads_has_no_items(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    assert crm.items_of_person(ann) == []
    assert crm.requests_made == 2  # the two associations reads (207: none)


# -- emails ------------------------------------------------------------------------------------


def test_an_email_is_one_engagement_with_its_headers_and_associations(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    owner = sandbox.add_owner("alice@acme.example", "Alice", "Rep")
    acme = sandbox.add_company("Example Inc", "example.com")
    ann = sandbox.add_contact("ann@example.com", company_id=acme)
    bob = sandbox.add_contact("bob@example.org")
    the_deal = sandbox.add_deal("Deal", ann, add_time=T0)
    created = crm.create_activity(
        draft(
            "<m1@example.com>",
            (ann, bob),
            deal(the_deal),
            owner_id=str(owner),
            organization_id=str(acme),
        )
    )
    [email] = sandbox.emails()
    assert str(email["id"]) == created
    props = email["properties"]
    assert props["hs_email_direction"] == "INCOMING_EMAIL"
    assert props["hs_email_subject"] == "Quote for 40 seats"
    assert props["hs_timestamp"] == "2025-05-01T14:05:00.000Z"
    assert props["maillink_key"] == "<m1@example.com>"
    assert props["hubspot_owner_id"] == str(owner)
    assert not {"hs_email_text", "hs_email_html"} & props.keys()  # never a body
    headers = json.loads(props["hs_email_headers"])
    assert headers["from"] == {"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"}
    assert [a["email"] for a in headers["to"]] == ["alice@acme.example"]
    assert [a["email"] for a in headers["cc"]] == ["bob@example.org"]
    assert email["associations"] == {
        "contacts": [ann, bob],
        "companies": [acme],
        "deals": [the_deal],
    }
    assert spec_problems(sandbox) == []


def test_an_outbound_email_is_written_as_sent(sandbox: HubSpotSandbox, crm: HubSpotCRM) -> None:
    ann = sandbox.add_contact("ann@example.com")
    crm.create_activity(draft("<out@x>", (ann,), direction=Direction.OUTBOUND))
    [email] = sandbox.emails()
    assert email["properties"]["hs_email_direction"] == "EMAIL"


def test_a_create_whose_answer_is_lost_is_found_by_key_without_a_duplicate(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    sandbox.search_lag = True  # search would not see it yet; the batch read by key does
    sandbox.lose_next_response(r"^/crm/v3/objects/emails/batch/create$")
    first = crm.create_activity(draft("<lost@x>", (ann,)))
    assert [str(e["id"]) for e in sandbox.emails()] == [first]
    assert crm.find_activity("<lost@x>", ann) == first
    assert crm.find_activity("<never@x>", ann) is None
    # The outbox's own retry after a crash: creating again gives the same email, not a second.
    assert crm.create_activity(draft("<lost@x>", (ann,))) == first
    assert len(sandbox.emails()) == 1


def test_a_lost_answer_with_nothing_written_stays_unknown(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    sandbox.inject_server_error(r"^/crm/v3/objects/emails/batch/create$", status=502)
    with pytest.raises(WriteOutcomeUnknown):
        crm.create_activity(draft("<m@x>", (ann,)))
    assert sandbox.emails() == []


def test_a_deal_deleted_since_the_decision_is_a_gone_record(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    gone = sandbox.add_deal("Gone", ann, add_time=T0)
    sandbox.archive("deals", gone)
    with pytest.raises(CRMRecordGone) as refused:
        crm.create_activity(draft("<m@x>", (ann,), deal(gone)))
    assert (refused.value.kind, refused.value.record_id) == ("deal", str(gone))
    assert sandbox.emails() == []


def test_a_later_decision_moves_the_associations_not_the_email(
    sandbox: HubSpotSandbox, crm: HubSpotCRM
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    first = sandbox.add_deal("First", ann, add_time=T0)
    the_lead = sandbox.add_lead("Lead", ann, add_time=T0)
    email_id = crm.create_activity(draft("<m@x>", (ann,), deal(first)))
    before = sandbox.emails()[0]["properties"]
    crm.update_activity(email_id, draft("<m@x>", (ann,), lead(the_lead)))
    [email] = sandbox.emails()
    assert email["associations"] == {"contacts": [ann], "leads": [the_lead]}
    assert email["properties"] == before
    assert spec_problems(sandbox) == []
    sandbox.archive("emails", int(email_id))
    with pytest.raises(CRMActivityGone):
        crm.update_activity(email_id, draft("<m@x>", (ann,), deal(first)))


def test_create_person_writes_a_contact(sandbox: HubSpotSandbox, crm: HubSpotCRM) -> None:
    person = crm.create_person("Carol Diaz", "Carol@Example.net")
    [contact] = sandbox.objects("contacts")
    assert person.id == contact["id"] and person.emails == ("carol@example.net",)
    assert contact["properties"]["firstname"] == "Carol"
    assert crm.create_person("Carol Diaz", "carol@example.net").id == person.id  # 409: the same


# -- limits and errors -------------------------------------------------------------------------


def test_a_burst_429_is_waited_out_and_retried(
    sandbox: HubSpotSandbox, crm: HubSpotCRM, waits: list[float]
) -> None:
    ann = sandbox.add_contact("ann@example.com")
    sandbox.inject_rate_limit(r"^/crm/v3/objects/emails/batch/create$", "TEN_SECONDLY_ROLLING")
    crm.create_activity(draft("<m@x>", (ann,)))
    assert waits == [10.0]  # X-HubSpot-RateLimit-Interval-Milliseconds
    assert len(sandbox.emails()) == 1


def test_the_burst_limit_of_the_sandbox_is_waited_out(
    sandbox: HubSpotSandbox, crm: HubSpotCRM, waits: list[float]
) -> None:
    sandbox.add_contact("ann@example.com")
    sandbox.limits.burst_per_10s = 1
    crm.search_persons("ann@example.com")
    sandbox.limits.reset()  # the window passes while the adapter waits
    sandbox.inject_rate_limit("/crm/v3/objects/contacts/batch/read")
    assert len(crm.search_persons("ann@example.com")) == 1
    assert waits == [10.0]


def test_the_daily_limit_parks_writes(sandbox: HubSpotSandbox, crm: HubSpotCRM) -> None:
    ann = sandbox.add_contact("ann@example.com")
    sandbox.limits.daily = 1
    crm.search_persons("ann@example.com")
    assert crm.http.daily_remaining == 0
    with pytest.raises(CRMRateLimited) as limited:
        crm.create_activity(draft("<m@x>", (ann,)))
    assert limited.value.daily and limited.value.retry_after > 0
    assert sandbox.emails() == []


def test_a_search_429_waits_a_second(
    sandbox: HubSpotSandbox, crm: HubSpotCRM, waits: list[float]
) -> None:
    sandbox.add_contact("ann@example.com", additional_emails=["ann@home.example"])
    sandbox.inject_rate_limit("/crm/v3/objects/contacts/search", "SECONDLY")
    assert len(crm.search_persons("ann@home.example")) == 1
    assert waits == [1.0]


def test_server_errors_on_reads_are_retried(
    sandbox: HubSpotSandbox, crm: HubSpotCRM, waits: list[float]
) -> None:
    sandbox.add_contact("ann@example.com")
    sandbox.inject_server_error("/crm/v3/objects/contacts/batch/read", status=503, times=2)
    assert len(crm.search_persons("ann@example.com")) == 1
    assert len(waits) == 2


def test_a_refused_token_is_an_auth_error(sandbox: HubSpotSandbox) -> None:
    crm = HubSpotCRM(sandbox.url, access_token="wrong-token")
    with pytest.raises(CRMAuthError):
        crm.search_persons("ann@example.com")


def test_base_url_must_be_https_but_for_loopback() -> None:
    assert check_base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_base_url("https://api.hubapi.com") == "https://api.hubapi.com"
    with pytest.raises(ValueError, match="https"):
        check_base_url("http://api.hubapi.com")


# -- changes and owners ------------------------------------------------------------------------


def test_changes_since_names_the_contacts_of_changed_items_and_changed_addresses(
    sandbox: HubSpotSandbox, crm: HubSpotCRM, clock: Clock
) -> None:
    clock.now = T0
    ann = sandbox.add_contact("ann@example.com", created=T0)
    bob = sandbox.add_contact("bob@example.org", created=T0)
    carol = sandbox.add_contact("carol@example.net", created=T0)
    ann_deal = sandbox.add_deal("Ann's", ann, add_time=T0)
    sandbox.add_deal("Bob's", bob, add_time=T0)
    carol_lead = sandbox.add_lead("Carol's", carol, add_time=T0)
    since = T0 + timedelta(days=1)
    clock.now = since + timedelta(hours=1)
    sandbox.close_deal(ann_deal, won=True, at=clock.now)
    sandbox.set_lead_stage(carol_lead, "connected-stage-id", clock.now)
    sandbox.add_secondary_email(bob, "bob@home.example")
    changes = crm.changes_since(since)
    assert changes.person_ids == {ann, carol}
    assert changes.emails == {"bob@example.org", "bob@home.example"}
    assert changes.until == NOW - timedelta(minutes=1)
    assert spec_problems(sandbox) == []


def test_owners_are_the_crm_users(sandbox: HubSpotSandbox, crm: HubSpotCRM) -> None:
    alice = sandbox.add_owner("Alice@Acme.example", "Alice", "Rep")
    users = crm.users()
    assert [(u.id, u.email, u.name) for u in users] == [
        (str(alice), "alice@acme.example", "Alice Rep")
    ]
    crm.users()
    assert crm.http.by_operation["owners.list"] == 1  # kept


# -- configuration -----------------------------------------------------------------------------


def _workspace(folder: Path, crm: str, credentials: dict[str, Any]) -> Path:
    config = folder / "maillink.toml"
    config.write_text(f"[crm]\n{crm}")
    (folder / "credentials.json").write_text(json.dumps(credentials))
    return config


def test_kind_hubspot_builds_the_hubspot_adapter_on_its_default_host(tmp_path: Path) -> None:
    config = _workspace(tmp_path, 'kind = "hubspot"\n', {"hubspot": {"access_token": "pat-1"}})
    settings = load_settings(config)
    assert (settings.crm.kind, settings.crm.base_url) == ("hubspot", "https://api.hubapi.com")
    app = App(settings)
    try:
        adapter = app.crm
        assert isinstance(adapter, HubSpotCRM)
        assert adapter.http.base_url == "https://api.hubapi.com"
    finally:
        app.close()


@pytest.mark.parametrize(
    ("crm", "credentials", "fragment"),
    [
        ('kind = "salesforce"\n', {}, "[crm] kind"),
        ('kind = "hubspot"\nbase_url = "http://api.hubapi.com"\n', {}, "[crm] base_url"),
        ('kind = "hubspot"\n', {"hubspot": {}}, "hubspot.access_token is missing"),
        ('kind = "hubspot"\n', {"hubspot": {"access_token": "x", "key": 1}}, "hubspot"),
        ('kind = "hubspot"\n', {}, "hubspot is missing"),
    ],
)
def test_hubspot_configuration_mistakes_name_the_key(
    tmp_path: Path, crm: str, credentials: dict[str, Any], fragment: str
) -> None:
    config = _workspace(tmp_path, crm, credentials)
    with pytest.raises(ConfigError) as error:
        app = App(load_settings(config))
        try:
            app.crm  # noqa: B018 - building it reads the credentials
        finally:
            app.close()
    assert fragment in str(error.value)
