"""`[linking] create_persons`: which addresses get a CRM person, and that each gets one only once
(across daemons deciding at the same moment, and after a crash halfway)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from maillink.crm.base import Changes, CRMRefused, CRMUnavailable
from maillink.linking.facts import Facts, LinkingPolicy, Reason
from maillink.linking.linker import CacheTTL, FactGatherer, Linker
from maillink.linking.new_persons import PersonCreator, creatable, unknown_addresses
from maillink.model import Address, Direction, Item, Message, Person
from maillink.store import Store, accounts, cache, mail

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
REP = "rep@acme.example"
POLICY = LinkingPolicy(
    own_addresses=frozenset({REP, "colleague@acme.example"}),
    internal_domains=frozenset({"acme.example", "acme-group.example"}),
    blocked=("noreply@*", "*@notifications.example.com"),
    create_persons=True,
)


class _CRM:
    """Narrow stand-in that remembers the persons it created."""

    def __init__(self) -> None:
        self.persons: dict[str, Person] = {}
        self.creates: list[tuple[str, str]] = []
        self.refuse = False

    def search_persons(self, email: str) -> list[Person]:
        return [self.persons[email]] if email in self.persons else []

    def items_of_person(self, person_id: int) -> list[Item]:
        return []

    def archived_items_of_person(self, person_id: int) -> list[Item]:
        return []

    def changes_since(self, since: datetime) -> Changes:
        return Changes(frozenset(), frozenset(), since)

    def create_person(self, name: str, email: str) -> Person:
        self.creates.append((name, email))
        if self.refuse:
            raise CRMRefused("Pipedrive refused the person", 400, "Invalid email")
        person = Person(100 + len(self.creates), name, (email,))
        self.persons[email] = person
        return person


def _message(sender: Address, *cc: Address, date: datetime | None = T0) -> Message:
    return Message(
        account=REP,
        provider_id=f"p-{sender.email}-{len(cc)}",
        thread_key=f"t-{sender.email}",
        message_id=f"{sender.email}-{len(cc)}@mail.example",
        date=date,
        direction=Direction.INBOUND,
        sender=sender,
        to=(Address(REP),),
        cc=cc,
        subject="Hello",
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("zoe@prospect.example", True),
        ("zoe.new+sales@sub.prospect.co.uk", True),
        ("zoe@xn--bcher-kva.example", True),
        ("zoe@localhost", False),  # no top-level domain
        ("zoe@[192.0.2.1]", False),  # an address literal
        ('"zoe new"@prospect.example', False),  # a quoted local part
        ("zoe..new@prospect.example", False),
        (".zoe@prospect.example", False),
        ("zoe@-prospect.example", False),
        ("zoe@prospect.example.", False),
        ("undisclosed-recipients", False),
        ("zoe@prospect.e", False),
        ("z" * 250 + "@prospect.example", False),
    ],
)
def test_only_plain_valid_addresses_can_become_persons(address: str, expected: bool) -> None:
    assert creatable(address) is expected


def test_blocked_internal_own_and_invalid_addresses_are_never_persons_to_create() -> None:
    messages = [
        _message(
            Address("noreply@tools.example", "Robot"),  # blocked
            Address("alerts@notifications.example.com"),  # blocked
            Address("colleague@acme.example", "Col"),  # own mailbox
            Address("dave@acme-group.example", "Dave"),  # internal domain
            Address("zoe@localhost"),  # invalid
            Address("zoe@[192.0.2.1]"),  # invalid
            Address("ann@customer.example", "Ann"),  # a known person
            Address("zoe@prospect.example", "Zoe  New"),  # the one unknown external address
        ),
        _message(Address("undated@prospect.example"), date=None),  # the rules write nothing
    ]
    known = Facts(persons_by_email={"ann@customer.example": [Person(1, "Ann")]})

    assert unknown_addresses(messages, POLICY, known) == {"zoe@prospect.example": "Zoe New"}
    blocked = LinkingPolicy(**{**POLICY.__dict__, "blocked": (*POLICY.blocked, "*@prospect.*")})
    assert unknown_addresses(messages, blocked, known) == {}


def test_an_address_without_a_display_name_is_named_after_itself() -> None:
    messages = [_message(Address("zoe@prospect.example"))]
    assert unknown_addresses(messages, POLICY, Facts()) == {
        "zoe@prospect.example": "zoe@prospect.example"
    }


def _decide(store: Store, crm: _CRM, *messages: Message, policy: LinkingPolicy = POLICY) -> str:
    with store.transaction() as conn:
        account = accounts.upsert(conn, REP, "gmail", "encrypted", "scope")
        touched = mail.save_messages(conn, account.id, list(messages), {})
    linker = Linker(store, FactGatherer(store, crm, CacheTTL()), policy)  # type: ignore[arg-type]
    reasons = linker.decide(account, touched)
    assert sum(reasons.values()) == len(messages)
    return next(iter(reasons))


def test_the_linker_creates_a_person_only_for_the_unknown_external_address(
    sqlite_store: Store,
) -> None:
    crm = _CRM()
    message = _message(
        Address("zoe@prospect.example", "Zoe New"),
        Address("noreply@tools.example", "Robot"),
        Address("dave@acme-group.example", "Dave"),
        Address("zoe@localhost", "Local"),
    )
    assert _decide(sqlite_store, crm, message) == Reason.NO_OPEN_ITEMS.value
    assert crm.creates == [("Zoe New", "zoe@prospect.example")]
    with sqlite_store.engine.connect() as conn:
        [row] = mail.messages_of_threads(conn, [1])[1]
    assert row["person_ids"] == [101]


def test_with_create_persons_off_nothing_is_created(sqlite_store: Store) -> None:
    crm = _CRM()
    off = LinkingPolicy(**{**POLICY.__dict__, "create_persons": False})
    message = _message(Address("zoe@prospect.example", "Zoe New"))
    assert _decide(sqlite_store, crm, message, policy=off) == Reason.NO_KNOWN_CONTACT.value
    assert crm.creates == []


def test_a_second_daemon_finds_the_person_the_first_created_and_creates_none(
    store: Store,
) -> None:
    crm = _CRM()
    wanted = {"zoe@prospect.example": "Zoe"}
    first = PersonCreator(store, crm, clock=lambda: T0)  # type: ignore[arg-type]
    second = PersonCreator(store, crm, clock=lambda: T0)  # type: ignore[arg-type]

    made = first.add_to(Facts(), wanted)
    found = second.add_to(Facts(), wanted)

    assert crm.creates == [("Zoe", "zoe@prospect.example")]
    assert (
        made.persons_by_email
        == found.persons_by_email
        == {"zoe@prospect.example": [crm.persons["zoe@prospect.example"]]}
    )
    assert found.items_by_person == {101: []}


def test_a_person_deleted_in_the_crm_after_maillink_created_it_is_not_created_again(
    store: Store,
) -> None:
    crm = _CRM()
    wanted = {"zoe@prospect.example": "Zoe"}
    PersonCreator(store, crm, clock=lambda: T0).add_to(Facts(), wanted)  # type: ignore[arg-type]
    crm.persons.clear()  # a user deleted it

    later = PersonCreator(store, crm, clock=lambda: T0 + timedelta(days=1))  # type: ignore[arg-type]
    assert later.add_to(Facts(), wanted).persons_by_email == {}
    assert len(crm.creates) == 1


def test_a_daemon_that_died_while_creating_is_taken_over_after_searching_again(
    store: Store,
) -> None:
    crm = _CRM()
    email = "zoe@prospect.example"
    with store.transaction() as conn:  # claimed, then the daemon died (its person made or not)
        assert cache.claim_person_creation(conn, email, T0, timedelta(minutes=2))
    crm.persons[email] = Person(7, "Zoe", (email,))  # it had got as far as the CRM

    soon = PersonCreator(
        store, crm, clock=lambda: T0 + timedelta(seconds=30), polls=2, sleep=lambda s: None
    )  # type: ignore[arg-type]
    with pytest.raises(CRMUnavailable):  # the claim is fresh: wait, then leave it for later
        soon.add_to(Facts(), {email: "Zoe"})

    stale = PersonCreator(store, crm, clock=lambda: T0 + timedelta(minutes=3))  # type: ignore[arg-type]
    assert stale.add_to(Facts(), {email: "Zoe"}).persons_by_email == {email: [crm.persons[email]]}
    assert crm.creates == []  # found by searching again, not created twice
    with store.engine.connect() as conn:
        assert cache.person_creation(conn, email) == cache.CREATED


def test_an_address_the_crm_refuses_stays_unknown_and_is_not_tried_again(
    sqlite_store: Store,
) -> None:
    crm = _CRM()
    crm.refuse = True
    wanted = {"zoe@prospect.example": "Zoe"}
    assert PersonCreator(sqlite_store, crm).add_to(Facts(), wanted).persons_by_email == {}  # type: ignore[arg-type]
    assert PersonCreator(sqlite_store, crm).add_to(Facts(), wanted).persons_by_email == {}  # type: ignore[arg-type]
    assert len(crm.creates) == 1


def test_a_create_without_answer_is_retried_after_a_pause_and_a_new_search(
    store: Store,
) -> None:
    crm = _CRM()
    email = "zoe@prospect.example"
    created_unanswered = crm.create_person

    def lost_answer(name: str, address: str) -> Person:
        created_unanswered(name, address)  # made in the CRM, but the answer never came
        raise CRMUnavailable("no answer from Pipedrive to POST /api/v2/persons")

    crm.create_person = lost_answer  # type: ignore[method-assign]
    with pytest.raises(CRMUnavailable):
        PersonCreator(store, crm, clock=lambda: T0).add_to(Facts(), {email: "Zoe"})  # type: ignore[arg-type]
    crm.create_person = created_unanswered  # type: ignore[method-assign]

    waits: list[float] = []
    soon = PersonCreator(store, crm, clock=lambda: T0 + timedelta(seconds=5), sleep=waits.append)  # type: ignore[arg-type]
    with pytest.raises(CRMUnavailable):  # postponed at once, without waiting
        soon.add_to(Facts(), {email: "Zoe"})
    assert waits == []

    later = PersonCreator(store, crm, clock=lambda: T0 + timedelta(minutes=3))  # type: ignore[arg-type]
    assert later.add_to(Facts(), {email: "Zoe"}).persons_by_email == {email: [crm.persons[email]]}
    assert len(crm.creates) == 1  # the search found the one the lost answer made


def test_a_daemon_waits_for_the_one_creating_the_person_and_uses_it(store: Store) -> None:
    crm = _CRM()
    email = "zoe@prospect.example"
    with store.transaction() as conn:  # another daemon claimed the address a moment ago
        assert cache.claim_person_creation(conn, email, T0, timedelta(minutes=2))

    def the_other_finishes(seconds: float) -> None:
        crm.persons[email] = Person(7, "Zoe", (email,))
        with store.transaction() as conn:
            cache.person_created(conn, email, 7)

    waiting = PersonCreator(store, crm, clock=lambda: T0, sleep=the_other_finishes)  # type: ignore[arg-type]
    assert waiting.add_to(Facts(), {email: "Zoe"}).persons_by_email == {email: [crm.persons[email]]}
    assert crm.creates == []
