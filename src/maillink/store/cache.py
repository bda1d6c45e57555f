"""The CRM caches: persons by email (including "no such person") and items by person, with expiry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from maillink.linking.facts import Item, ItemRef, ItemStatus, Person
from maillink.store.schema import crm_state, item_cache, person_cache


def _person_json(p: Person) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "emails": list(p.emails)}


def _person(d: Mapping[str, Any]) -> Person:
    return Person(id=int(d["id"]), name=d["name"], emails=tuple(d["emails"]))


def _item_json(i: Item) -> dict[str, Any]:
    return {
        "ref": str(i.ref),
        "title": i.title,
        "person_ids": sorted(i.person_ids),
        "created_at": i.created_at.isoformat(),
        "status": i.status.value,
        "closed_at": i.closed_at.isoformat() if i.closed_at else None,
    }


def _item(d: Mapping[str, Any]) -> Item:
    return Item(
        ref=ItemRef.parse(d["ref"]),
        title=d["title"],
        person_ids=frozenset(d["person_ids"]),
        created_at=datetime.fromisoformat(d["created_at"]),
        status=ItemStatus(d["status"]),
        closed_at=datetime.fromisoformat(d["closed_at"]) if d["closed_at"] else None,
    )


def fresh_persons(
    conn: Connection, emails: Iterable[str], now: datetime, ttl: timedelta
) -> dict[str, list[Person]]:
    wanted = sorted(set(emails))
    found: dict[str, list[Person]] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            select(person_cache).where(
                person_cache.c.email.in_(wanted[start : start + 500]),
                person_cache.c.fetched_at > now - ttl,
            )
        )
        for row in rows:
            found[row.email] = [_person(p) for p in row.persons]
    return found


def _upsert(conn: Connection, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
    """Insert or replace rows by their key in one statement: daemons caching the same person at
    the same time do not collide (PostgreSQL and SQLite both have ON CONFLICT)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    excluded = {c.name: statement.excluded[c.name] for c in table.columns if c.name != key}
    conn.execute(statement.on_conflict_do_update(index_elements=[key], set_=excluded), rows)


def put_persons(
    conn: Connection, persons_by_email: Mapping[str, Sequence[Person]], now: datetime
) -> None:
    if not persons_by_email:
        return
    rows = [
        {"email": e, "persons": [_person_json(p) for p in found], "fetched_at": now}
        for e, found in sorted(persons_by_email.items())
    ]
    _upsert(conn, person_cache, "email", rows)


def fresh_items(
    conn: Connection, person_ids: Iterable[int], now: datetime, ttl: timedelta
) -> dict[int, list[Item]]:
    wanted = sorted(set(person_ids))
    found: dict[int, list[Item]] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            select(item_cache).where(
                item_cache.c.person_id.in_(wanted[start : start + 500]),
                item_cache.c.fetched_at > now - ttl,
            )
        )
        for row in rows:
            found[row.person_id] = [_item(i) for i in row.items]
    return found


def put_items(
    conn: Connection, items_by_person: Mapping[int, Sequence[Item]], now: datetime
) -> None:
    if not items_by_person:
        return
    rows = [
        {"person_id": p, "items": [_item_json(i) for i in found], "fetched_at": now}
        for p, found in sorted(items_by_person.items())
    ]
    _upsert(conn, item_cache, "person_id", rows)


EXPIRED = datetime(1970, 1, 1, tzinfo=UTC)


def forget(conn: Connection, *, emails: Iterable[str] = (), person_ids: Iterable[int] = ()) -> None:
    """Expire cache entries that a CRM change made stale (webhook or polling).

    Expired entries are read again from the CRM before the next decision; until then they still
    name the items for `maillink explain` and `pending` (titles, statuses).
    """
    email_list = sorted({e.lower() for e in emails})
    id_list = sorted(set(person_ids))
    for start in range(0, len(email_list), 500):
        conn.execute(
            update(person_cache)
            .where(person_cache.c.email.in_(email_list[start : start + 500]))
            .values(fetched_at=EXPIRED)
        )
    for start in range(0, len(id_list), 500):
        conn.execute(
            update(item_cache)
            .where(item_cache.c.person_id.in_(id_list[start : start + 500]))
            .values(fetched_at=EXPIRED)
        )


def forget_all(conn: Connection) -> None:
    conn.execute(update(person_cache).values(fetched_at=EXPIRED))
    conn.execute(update(item_cache).values(fetched_at=EXPIRED))


def get_state(conn: Connection, name: str) -> str | None:
    return conn.execute(select(crm_state.c.value).where(crm_state.c.name == name)).scalar()


def set_state(conn: Connection, name: str, value: str) -> None:
    conn.execute(delete(crm_state).where(crm_state.c.name == name))
    conn.execute(insert(crm_state).values(name=name, value=value))
