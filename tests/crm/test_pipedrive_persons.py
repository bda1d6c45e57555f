"""`PipedriveCRM.create_person` against the sandbox: Pipedrive's request, the person it made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import openapi_check
from maillink.crm.pipedrive import PipedriveCRM
from maillink.model import Person
from maillink.sandbox.pipedrive import PipedriveSandbox


@pytest.fixture
def sandbox() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox() as running:
        yield running


def test_a_created_person_has_the_name_and_address_and_is_found_by_email(
    sandbox: PipedriveSandbox,
) -> None:
    crm = PipedriveCRM(sandbox.url, api_token=sandbox.api_token)

    made = crm.create_person("Zoe New", "zoe@prospect.example")

    assert made == Person(made.id, "Zoe New", ("zoe@prospect.example",))
    assert crm.search_persons("ZOE@prospect.example") == [made]
    [sent] = [r for r in sandbox.received if r.operation == "persons.create"]
    assert sent.body == {
        "name": "Zoe New",
        "emails": [{"value": "zoe@prospect.example", "primary": True}],
    }
    # Pipedrive's published spec lists `title` as required for a person (persons have a name):
    # the one objection the check may raise.
    errors = openapi_check.request_errors(sent.path, "POST", sent.body)
    assert errors == ["<body>: 'title' is a required property"]
    assert sandbox.meter.units["persons.create"] == 5
    assert crm.http.tokens_spent == 20 + 5  # one search, one create: the specs' costs
