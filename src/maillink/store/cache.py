"""The CRM caches: persons by email (including "no such person") and items by person, with expiry;
the CRM state (poll times, the persons maillink created), and the one-statement writes (upsert,
insert-or-ignore) of rows that several daemons may write at the same moment."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from maillink.model import Item, ItemRef, ItemStatus, Person
from maillink.store.schema import crm_state, item_cache, person_cache


def _person_json(p: Person) -> dict[str, Any]:
    data: dict[str, Any] = {"id": p.id, "name": p.name, "emails": list(p.emails)}
    if p.organization_id is not None:
        data["organization_id"] = p.organization_id
    return data


def _person(d: Mapping[str, Any]) -> Person:
    return Person(
        id=int(d["id"]),
        name=d["name"],
        emails=tuple(d["emails"]),
        organization_id=d.get("organization_id"),
    )


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


def _dialect_insert(conn: Connection, table: Table) -> Any:
    """INSERT with PostgreSQL's and SQLite's ON CONFLICT clause (maillink runs on those two)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def upsert(
    conn: Connection, table: Table, key: str | Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Insert or replace rows by their key in one statement: daemons caching the same person at
    the same time do not collide (PostgreSQL and SQLite both have ON CONFLICT)."""
    keys = [key] if isinstance(key, str) else list(key)
    statement = _dialect_insert(conn, table)
    excluded = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=excluded), list(rows))


def insert_or_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the rows whose key is free, leave the others as another writer put them, in one
    statement: a row written by another daemon at the same moment cannot fail this one (the
    caller reads back which rows are its own). Rows in a stable order: no deadlock between two
    writers of overlapping sets."""
    if rows:
        conn.execute(_dialect_insert(conn, table).on_conflict_do_nothing(), list(rows))


def put_persons(
    conn: Connection, persons_by_email: Mapping[str, Sequence[Person]], now: datetime
) -> None:
    if not persons_by_email:
        return
    rows = [
        {"email": e, "persons": [_person_json(p) for p in found], "fetched_at": now}
        for e, found in sorted(persons_by_email.items())
    ]
    upsert(conn, person_cache, "email", rows)


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
    upsert(conn, item_cache, "person_id", rows)


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
    """Set (or replace) a value; two daemons setting it at once both succeed, the last wins."""
    upsert(conn, crm_state, "name", [{"name": name, "value": value}])


def add_state(conn: Connection, name: str, value: str) -> None:
    """Set a value that must not exist yet: IntegrityError when another process set it first."""
    conn.execute(insert(crm_state).values(name=name, value=value))


def replace_state(conn: Connection, name: str, old: str, new: str) -> bool:
    """Compare-and-set: `new` only while the value is still `old`; whether it was replaced."""
    replaced = conn.execute(
        update(crm_state)
        .where(crm_state.c.name == name, crm_state.c.value == old)
        .values(value=new)
    ).rowcount
    return bool(replaced)


# -- persons maillink creates ([linking] create_persons) -----------------------------------------
# One crm_state row per address: "creating <time> <token>" while a daemon creates the person,
# "failed <time> <token>" when its attempt ended without an answer (retried after a pause, after
# searching again), "created <id>" once done (never created again, also when someone deletes it
# in the CRM), "refused <why>" when the CRM refused it for good.
CREATING, FAILED, CREATED, REFUSED = "creating", "failed", "created", "refused"


def _creation(email: str) -> str:
    return "person_created:" + hashlib.sha256(email.lower().encode()).hexdigest()[:40]


def person_creation(conn: Connection, email: str) -> str | None:
    """What maillink did about creating a person for this address: None (nothing yet), or the
    state word CREATING, FAILED, CREATED or REFUSED."""
    value = get_state(conn, _creation(email))
    return value.split(" ", 1)[0] if value else None


def claim_person_creation(
    conn: Connection, email: str, now: datetime, stale: timedelta
) -> str | None:
    """The claim (a token) when this caller is the one to create the person: nobody claimed the
    address yet, or the last attempt (a daemon that died, or failed) is older than `stale`."""
    name = _creation(email)
    token = secrets.token_hex(6)
    mine = f"{CREATING} {now.isoformat()} {token}"
    insert_or_ignore(conn, crm_state, [{"name": name, "value": mine}])
    value = get_state(conn, name)
    if value == mine:
        return token
    word, _, rest = (value or "").partition(" ")
    if word not in (CREATING, FAILED):
        return None
    try:
        since = datetime.fromisoformat(rest.split(" ", 1)[0])
    except ValueError:
        since = EXPIRED
    if since > now - stale:
        return None
    taken = conn.execute(
        update(crm_state)
        .where(crm_state.c.name == name, crm_state.c.value == value)
        .values(value=mine)
    ).rowcount
    return token if taken else None


def person_failed(conn: Connection, email: str, token: str, now: datetime) -> None:
    """The claimed attempt ended without an answer: pause, then let whoever comes next retry."""
    conn.execute(
        update(crm_state)
        .where(crm_state.c.name == _creation(email), crm_state.c.value.endswith(f" {token}"))
        .values(value=f"{FAILED} {now.isoformat()} {token}")
    )


def person_created(conn: Connection, email: str, person_id: int) -> None:
    set_state(conn, _creation(email), f"{CREATED} {person_id}")


def person_refused(conn: Connection, email: str, why: str) -> None:
    set_state(conn, _creation(email), f"{REFUSED} {why}")
