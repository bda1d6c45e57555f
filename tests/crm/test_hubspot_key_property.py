"""The email key's custom property (`maillink_key`) checked once and created when the token may,
and emails found again with or without HubSpot's unique values, over real HTTP against the
HubSpot sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from tests.crm.hubspot_support import draft, sandbox_fixtures

import hubspot_openapi_check as spec_check
from maillink.cli import main
from maillink.crm import hubspot_oauth
from maillink.crm.base import CRMRefused, CRMUnavailable
from maillink.crm.hubspot import HubSpotCRM
from maillink.crm.hubspot_properties import KeyPropertyMissing, KeyPropertyUnusable
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.sandbox.hubspot.scopes import ALL_SCOPES
from maillink.secrets import TokenCipher

NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
CREATE = r"^/crm/v3/objects/emails/batch/create$"
KEY = "maillink_key"
SCHEMA_WRITE = "crm.schemas.contacts.write"

clock, server, sandbox = sandbox_fixtures(NOW, unlimited=True)


@pytest.fixture
def account(sandbox: HubSpotSandbox) -> Iterator[HubSpotSandbox]:
    """The sandbox, put back as the other tests expect it afterwards."""
    yield sandbox
    sandbox.maillink_key_property = sandbox.maillink_key_unique = True
    sandbox.private_app_scopes = ALL_SCOPES
    sandbox.reset()


def key_property(sandbox: HubSpotSandbox, kind: str) -> None:
    """The account's `maillink_key`: "unique", "not unique" or "missing"."""
    sandbox.maillink_key_property = kind != "missing"
    sandbox.maillink_key_unique = kind == "unique"
    sandbox.reset()


def adapter(sandbox: HubSpotSandbox) -> HubSpotCRM:
    return HubSpotCRM(
        sandbox.url,
        access_token=sandbox.access_token,
        check_key_property=True,
        sleep=lambda _: None,
        now=lambda: NOW,
    )


def operations(sandbox: HubSpotSandbox) -> list[str]:
    return [r.operation for r in sandbox.received]


def spec_problems(sandbox: HubSpotSandbox) -> list[str]:
    """What HubSpot's specs refuse in the requests sent (the Properties API is not vendored)."""
    problems = []
    for sent in sandbox.received:
        if sent.path.startswith("/crm/v3/properties/") or sent.body is None:
            continue
        found = spec_check.request_errors(sent.path, sent.method, sent.body)
        problems += [f"{sent.method} {sent.path}: {p}" for p in found]
    return problems


def emails_with_key(sandbox: HubSpotSandbox, key: str) -> list[int]:
    return [e["id"] for e in sandbox.emails() if e["properties"].get(KEY) == key]


# -- the property: checked once, created when missing --------------------------------------------


def test_a_missing_key_property_is_created_unique_when_the_token_may_then_never_read_again(
    account: HubSpotSandbox,
) -> None:
    key_property(account, "missing")
    account.private_app_scopes = ALL_SCOPES | {SCHEMA_WRITE}
    crm = adapter(account)
    ann = account.add_contact("ann@example.com", "Ann")

    first = crm.create_activity(draft(1, ann))
    second = crm.create_activities([draft(2, ann), draft(3, ann)])

    assert operations(account) == [
        "properties.read",
        "properties.groups",
        "properties.create",
        "objects.batch.create",
        "objects.batch.create",
    ]
    [created] = [r.body for r in account.received if r.operation == "properties.create"]
    assert {k: created[k] for k in ("name", "type", "fieldType", "groupName")} == {
        "name": KEY,
        "type": "string",
        "fieldType": "text",
        "groupName": "emailinformation",
    }
    assert created["hasUniqueValue"] is True
    assert account.records.custom["emails"] == {KEY: True}  # HubSpot keeps the values unique
    assert emails_with_key(account, draft(1, ann).key) == [int(first)]
    assert [str(i) for i in emails_with_key(account, draft(3, ann).key)] == [second[1]]
    assert crm.emails.key_unique
    assert spec_problems(account) == []


def test_a_missing_key_property_the_token_may_not_create_is_one_line_saying_what_to_create(
    account: HubSpotSandbox,
) -> None:
    key_property(account, "missing")
    crm = adapter(account)
    ann = account.add_contact("ann@example.com", "Ann")

    with pytest.raises(KeyPropertyMissing) as refused:
        crm.create_activities([draft(1, ann)])

    said = str(refused.value)
    assert "\n" not in said
    assert f"HubSpot has no email property {KEY}" in said
    assert f'internal name "{KEY}"' in said and "single-line text" in said
    assert "Require unique values" in said and "MISSING_SCOPES" not in said
    assert "objects.batch.create" not in operations(account)  # nothing written without it
    assert account.emails() == []

    # The failed check is not remembered: once the app may create it, the next write does.
    account.private_app_scopes = ALL_SCOPES | {SCHEMA_WRITE}
    [created] = crm.create_activities([draft(1, ann)])
    assert emails_with_key(account, draft(1, ann).key) == [int(str(created))]


def test_an_account_refusing_unique_values_on_emails_gets_the_property_without_them(
    account: HubSpotSandbox,
) -> None:
    key_property(account, "missing")
    account.private_app_scopes = ALL_SCOPES | {SCHEMA_WRITE}
    account.properties.unique_types.discard("emails")
    crm = adapter(account)

    found = crm.check_key_property()

    assert found is not None and (found.created, found.unique) == (True, False)
    assert "through their contacts" in found.describe()
    uniques = [r.body["hasUniqueValue"] for r in account.received if r.body is not None]
    assert uniques == [True, False]  # refused with unique values, created without
    assert account.records.custom["emails"] == {KEY: False}
    assert not crm.emails.key_unique


def test_a_key_property_that_is_not_text_is_refused_naming_it(account: HubSpotSandbox) -> None:
    key_property(account, "missing")
    account.private_app_scopes = ALL_SCOPES | {SCHEMA_WRITE}
    number = {"name": KEY, "label": "k", "type": "number", "fieldType": "number"}
    answer = adapter(account).http.call(
        "properties.create",
        "POST",
        "/crm/v3/properties/emails",
        json={**number, "groupName": "emailinformation"},
    )
    assert answer["type"] == "number"

    with pytest.raises(KeyPropertyUnusable, match=f"{KEY} is a number property"):
        adapter(account).check_key_property()


def test_the_sandbox_refuses_a_second_property_of_a_name_and_a_group_it_has_not(
    account: HubSpotSandbox,
) -> None:
    account.private_app_scopes = ALL_SCOPES | {SCHEMA_WRITE}
    http = adapter(account).http
    body = {"name": KEY, "label": "k", "type": "string", "fieldType": "text"}
    with pytest.raises(CRMRefused) as exists:
        http.call("p", "POST", "/crm/v3/properties/emails", json={**body, "groupName": "x"})
    assert exists.value.status == 400 and "group x does not exist" in str(exists.value)
    with pytest.raises(CRMRefused) as exists:
        http.call(
            "p", "POST", "/crm/v3/properties/emails", json={**body, "groupName": "emailinformation"}
        )
    assert exists.value.status == 409
    read = http.call("p", "GET", f"/crm/v3/properties/emails/{KEY}")
    assert (read["name"], read["type"], read["hasUniqueValue"]) == (KEY, "string", True)
    assert http.call("p", "GET", "/crm/v3/properties/emails/hs_timestamp")["hubspotDefined"]


# -- finding an email again ----------------------------------------------------------------------


def test_without_unique_values_a_lost_create_is_found_through_the_contacts_emails_once(
    account: HubSpotSandbox,
) -> None:
    key_property(account, "not unique")
    crm = adapter(account)
    ann = account.add_contact("ann@example.com", "Ann")
    others = crm.create_activities([draft(n, ann) for n in range(2, 6)])  # ann's other emails
    account.received.clear()
    account.lose_next_response(CREATE)

    found = crm.create_activity(draft(1, ann))

    assert emails_with_key(account, draft(1, ann).key) == [int(found)]  # no duplicate
    assert found not in others and len(account.emails()) == 5
    assert operations(account) == [
        "objects.batch.create",  # carried out, its answer lost
        "associations.read",  # ann's emails (read-after-write, not search)
        "objects.batch.read",  # their keys, by id
    ]
    [read] = [r.body for r in account.received if r.operation == "objects.batch.read"]
    assert "idProperty" not in read  # HubSpot reads by a unique property only
    assert crm.find_activity(draft(1, ann).key, ann) == found
    assert crm.find_activity("<never-sent@example.com>", ann) is None
    assert spec_problems(account) == []


def test_without_unique_values_a_lost_batch_is_found_through_its_contacts_without_duplicates(
    account: HubSpotSandbox,
) -> None:
    key_property(account, "not unique")
    crm = adapter(account)
    ann = account.add_contact("ann@example.com", "Ann")
    bob = account.add_contact("bob@example.org", "Bob")
    drafts = [draft(n, ann if n % 2 else bob) for n in range(6)]
    account.lose_next_response(CREATE)

    ids = crm.create_activities(drafts)

    assert all(isinstance(i, str) for i in ids)
    for one, got in zip(drafts, ids, strict=True):
        assert [str(i) for i in emails_with_key(account, one.key)] == [got]
    assert len(account.emails()) == 6
    reads = [r.body for r in account.received if r.operation == "associations.read"]
    assert [sorted(i["id"] for i in body["inputs"]) for body in reads] == [
        sorted([str(ann), str(bob)])  # both contacts in one read
    ]


def test_without_unique_values_the_email_of_an_unreachable_contact_stays_unknown(
    account: HubSpotSandbox,
) -> None:
    key_property(account, "not unique")
    crm = adapter(account)
    ann = account.add_contact("ann@example.com", "Ann")
    account.lose_next_response(CREATE)
    account.inject_server_error(r"^/crm/v4/associations/contacts/emails/batch/read$", times=10)

    with pytest.raises(CRMUnavailable):  # the outbox looks it up again later
        crm.create_activity(draft(1, ann))
    assert len(account.emails()) == 1  # created once: the outbox looks it up before a create


def test_with_unique_values_a_lost_create_is_found_by_one_batch_read_of_the_key(
    account: HubSpotSandbox,
) -> None:
    key_property(account, "unique")
    crm = adapter(account)
    ann = account.add_contact("ann@example.com", "Ann")
    account.lose_next_response(CREATE)

    found = crm.create_activity(draft(1, ann))

    assert emails_with_key(account, draft(1, ann).key) == [int(found)]
    assert operations(account) == ["properties.read", "objects.batch.create", "objects.batch.read"]
    [read] = [r.body for r in account.received if r.operation == "objects.batch.read"]
    assert read["idProperty"] == KEY and read["inputs"] == [{"id": draft(1, ann).key}]
    assert crm.requests_made == 3  # the property once, the create, one read
    assert spec_problems(account) == []


# -- maillink crm connect hubspot ----------------------------------------------------------------


def connect(folder: Path, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch) -> int:
    """`maillink crm connect hubspot` through the public app, the admin consenting at once."""
    monkeypatch.setattr(
        hubspot_oauth.webbrowser, "open", lambda url: bool(requests.get(url, timeout=10))
    )
    config = folder / "maillink.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{folder / "m.db"}"\n\n'
        f'[crm]\nkind = "hubspot"\nbase_url = "{sandbox.url}"\n'
    )
    app = {
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "auth_url": f"{sandbox.url}/oauth/authorize",
        "token_url": f"{sandbox.url}/oauth/v3/token",
    }
    credentials = {"hubspot": app, "encryption_key": TokenCipher.generate_key()}
    (folder / "credentials.json").write_text(json.dumps(credentials))
    try:
        main(["--config", str(config), "crm", "connect", "hubspot", "--port", "0"])
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def test_crm_connect_says_how_emails_are_found_again(
    account: HubSpotSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_property(account, "not unique")

    assert connect(tmp_path, account, monkeypatch) == 0

    said = capsys.readouterr().out.splitlines()
    assert said[-1] == (
        f"HubSpot's email property {KEY}: present "
        "(values not unique: emails are found again through their contacts)"
    )


def test_crm_connect_without_the_key_property_says_in_one_line_what_to_create(
    account: HubSpotSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_property(account, "missing")  # and the public app may not change properties

    assert connect(tmp_path, account, monkeypatch) == 1

    said = capsys.readouterr()
    assert "connected HubSpot" in said.out  # the grant is kept: only the property is missing
    line = said.err.strip().splitlines()[-1]  # after the consent page's line
    assert line.startswith(f"maillink: error: HubSpot has no email property {KEY} and this token")
    assert "Create property" in line
    assert "properties.create" in operations(account)  # it tried, HubSpot refused (403)
    assert KEY not in account.records.custom.get("emails", {})
