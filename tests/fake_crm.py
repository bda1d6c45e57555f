"""A small in-process CRM for the narrow unit tests of the linker and the outbox: it implements
`maillink.crm.base.CRM`, keeps what was written, and fails the next calls it is told to fail.
End-to-end tests use the Pipedrive sandbox over real HTTP instead."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import datetime

from maillink.crm.base import CRM, ActivityDraft, Changes, CRMUnavailable
from maillink.model import Item, Person


class FakeCRM:
    """Persons and items as the test sets them; activities as the outbox writes them."""

    def __init__(self) -> None:
        self.persons: dict[str, list[Person]] = {}
        self.items: dict[int, list[Item]] = {}
        self.activities: dict[str, ActivityDraft] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, key or argument), in order
        self._failures: dict[str, list[Exception]] = defaultdict(list)
        self._lose_answers = 0
        self._lock = threading.RLock()  # the outbox calls from several worker threads

    # -- setting the scene --------------------------------------------------------------------
    def add_person(self, person: Person, *items: Item) -> None:
        for email in person.emails:
            self.persons.setdefault(email.lower(), []).append(person)
        self.items.setdefault(person.id, []).extend(items)

    def fail_next(self, operation: str, error: Exception) -> None:
        """The next call of `operation` (create_activity, update_activity…) raises `error`."""
        self._failures[operation].append(error)

    def lose_next_create_answer(self) -> None:
        """The next create reaches the CRM, but its answer is lost (the caller sees an error)."""
        self._lose_answers += 1

    def count(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)

    def _call(self, operation: str, argument: str) -> None:
        with self._lock:
            self.calls.append((operation, argument))
            if self._failures[operation]:
                raise self._failures[operation].pop(0)

    # -- the CRM interface ---------------------------------------------------------------------
    def search_persons(self, email: str) -> list[Person]:
        self._call("search_persons", email)
        return list(self.persons.get(email.lower(), ()))

    def items_of_person(self, person_id: int) -> list[Item]:
        self._call("items_of_person", str(person_id))
        return list(self.items.get(person_id, ()))

    def archived_items_of_person(self, person_id: int) -> list[Item]:
        self._call("archived_items_of_person", str(person_id))
        return []

    def changes_since(self, since: datetime) -> Changes:
        return Changes(frozenset(), frozenset(), since)

    def create_activity(self, draft: ActivityDraft) -> str:
        with self._lock:
            self._call("create_activity", draft.key)
            activity_id = str(1000 + len(self.activities))
            self.activities[activity_id] = draft
            if self._lose_answers:
                self._lose_answers -= 1
                raise CRMUnavailable("the CRM's answer was lost (timeout)")
            return activity_id

    def update_activity(self, activity_id: str, draft: ActivityDraft) -> None:
        self._call("update_activity", draft.key)
        self.activities[activity_id] = draft

    def find_activity(self, key: str, person_id: int | None) -> str | None:
        self._call("find_activity", key)
        return next((i for i, d in self.activities.items() if d.key == key), None)

    def create_person(self, name: str, email: str) -> Person:
        self._call("create_person", email)
        person = Person(500 + len(self.persons), name, (email,))
        self.add_person(person)
        return person

    def forget_cached(self) -> None:
        pass


def _implements_the_protocol(crm: FakeCRM) -> CRM:
    return crm  # mypy checks that FakeCRM is a CRM
