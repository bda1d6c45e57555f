"""Persons maillink creates in the CRM for unknown external addresses (`[linking] create_persons`).

Off by default. When on, an external participant of a message (never an own, internal or blocked
address: `external_participants` already leaves those out) whose address is valid and names no
CRM person gets one, named after the display name (or the address), before the thread is decided;
the rules then link the email to it like to any known person.

Once per address, across daemons and crashes: a row in the store claims the address before the
CRM is asked (insert-or-ignore: one daemon wins; the others wait a little for it, else decide
those threads later), the CRM is searched again before the person is created, and the row records
the person created, so that nobody creates it again, also after someone deleted it in the CRM.
A claim whose daemon died, or whose create got no answer, is taken over after `STALE_CLAIM`
(searching again first: a create whose answer was lost is found, not made twice). A refusal
(an address the CRM will not take) is recorded and never retried.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta

from maillink.crm.base import CRM, CRMRefused, CRMUnavailable
from maillink.linking.facts import Facts, LinkingPolicy
from maillink.linking.rules import external_participants
from maillink.model import Item, Message, Person
from maillink.store import Store, cache

log = logging.getLogger(__name__)

# A claim older than this is a daemon's that died between claiming and finishing.
STALE_CLAIM = timedelta(minutes=2)
_ADDRESS = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"
)


def creatable(email: str) -> bool:
    """A plain, valid internet address (no quoted local part, no address literal, a real
    top-level domain): what a CRM person can be created for."""
    return len(email) <= 254 and _ADDRESS.fullmatch(email) is not None


def unknown_addresses(
    messages: Iterable[Message], policy: LinkingPolicy, facts: Facts
) -> dict[str, str]:
    """The valid external addresses of dated messages that name no CRM person, each with the
    first display name seen for it (else the address)."""
    found: dict[str, str] = {}
    for message in messages:
        if message.date is None:  # the rules write nothing for it
            continue
        for address in external_participants(message, policy)[0]:
            email = address.email.strip().lower()
            if facts.persons_by_email.get(email) or not creatable(email):
                continue
            name = " ".join(address.name.split())
            if name and found.get(email, email) == email:
                found[email] = name
            found.setdefault(email, email)
    return found


def _now() -> datetime:
    return datetime.now(UTC)


class PersonCreator:
    """Creates the persons `unknown_addresses` names, once each team-wide, and returns the
    facts with them (and the items of persons that turned out to exist after all)."""

    def __init__(
        self,
        store: Store,
        crm: CRM,
        *,
        clock: Callable[[], datetime] = _now,
        stale: timedelta = STALE_CLAIM,
        polls: int = 50,
        poll_seconds: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.crm = crm
        self.clock = clock
        self.stale = stale
        self.polls = polls
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.created = 0

    def add_to(self, facts: Facts, wanted: Mapping[str, str]) -> Facts:
        """`facts` with a person for each address of `wanted` (address → name) the CRM has one
        for now, created where needed. An address the CRM refuses stays unknown."""
        if not wanted:
            return facts
        persons = {email: list(found) for email, found in facts.persons_by_email.items()}
        items = {pid: list(found) for pid, found in facts.items_by_person.items()}
        learned: dict[str, list[Person]] = {}
        fetched: dict[int, list[Item]] = {}
        for email, name in sorted(wanted.items()):
            found, created = self._person_for(email, name)
            if not found:
                continue
            persons[email] = learned[email] = found
            for person in found:
                if person.id not in items:  # a person just created has no items yet
                    fetched[person.id] = [] if created else self.crm.items_of_person(person.id)
                    items[person.id] = fetched[person.id]
        now = self.clock()
        with self.store.transaction() as conn:
            cache.put_persons(conn, learned, now)
            cache.put_items(conn, fetched, now)
        return Facts(persons_by_email=persons, items_by_person=items)

    def _person_for(self, email: str, name: str) -> tuple[list[Person], bool]:
        """The address's persons, and whether this call created the one found."""
        with self.store.transaction() as conn:
            claim = cache.claim_person_creation(conn, email, self.clock(), self.stale)
            state = None if claim else cache.person_creation(conn, email)
        if claim is None:
            if state == cache.CREATING:
                state = self._wait_for_creation(email)
            if state == cache.FAILED:
                raise CRMUnavailable("creating a CRM person failed a moment ago; again later")
            if state != cache.CREATED:
                return [], False  # refused for good: stays unknown
            return self.crm.search_persons(email), False  # [] if someone deleted it since
        try:
            # Created meanwhile, by a person or by a daemon that died before recording it?
            found = self.crm.search_persons(email)
            created = not found
            if created:
                found = [self.crm.create_person(name, email)]
        except CRMRefused as exc:
            log.warning("the CRM refused to create a person for an address: %s", exc)
            with self.store.transaction() as conn:
                cache.person_refused(conn, email, f"{exc.status}: {exc.answer}"[:500])
            return [], False
        except BaseException:
            # Unknown outcome, or never sent: whoever comes after the pause searches first.
            with self.store.transaction() as conn:
                cache.person_failed(conn, email, claim, self.clock())
            raise
        if created:
            self.created += 1
            log.info(
                "created a CRM person for an unknown address", extra={"person_id": found[0].id}
            )
        with self.store.transaction() as conn:
            cache.person_created(conn, email, found[0].id)
        return found, created

    def _wait_for_creation(self, email: str) -> str | None:
        """Another daemon is creating the person: wait a little for it to finish."""
        for _ in range(self.polls):
            self.sleep(self.poll_seconds)
            with self.store.engine.connect() as conn:
                state = cache.person_creation(conn, email)
            if state != cache.CREATING:
                return state
        raise CRMUnavailable("another daemon is creating a CRM person for an address of this page")
