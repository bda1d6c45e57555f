"""The CRM mirror's statements: persons by address, items by person, what went stale, its state.

The mirror is filled and kept by `maillink.crm.mirror` (through `MirrorTables`); every daemon of
a store shares it. Its state is one crm_state row ("crm_mirror", JSON) changed only by
compare-and-set, first thing in the transaction that writes the rows: of two refreshes at once,
the second finds the state moved, and its transaction (rows included) is rolled back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, bindparam, delete, exists, select

from maillink.model import Item, ItemKind, ItemRef, ItemStatus, Person
from maillink.store.cache import (
    forget,
    forget_all,
    get_state,
    insert_or_ignore,
    replace_state,
    upsert,
)
from maillink.store.schema import crm_mirror_items, crm_mirror_persons, crm_mirror_stale, crm_state

if TYPE_CHECKING:
    from maillink.store import Store

STATE = "crm_mirror"
EVERYTHING = "all"  # the stale key that stands for the whole mirror
_CHUNK = 500


def read_state(conn: Connection) -> str | None:
    """The state as stored (JSON, `maillink.crm.mirror.MirrorState`); None before the first fill."""
    return get_state(conn, STATE)


def swap_state(conn: Connection, old: str | None, new: str) -> bool:
    """Compare-and-set: `new` only while the stored state is still `old` (None: no row yet);
    whether this caller's state is now the stored one. On PostgreSQL the row stays locked until
    the transaction ends, so a concurrent swap waits and then fails."""
    if old is None:
        insert_or_ignore(conn, crm_state, [{"name": STATE, "value": new}])
        return get_state(conn, STATE) == new
    return replace_state(conn, STATE, old, new)


# -- reads ---------------------------------------------------------------------------------------


def stale(conn: Connection, keys: Iterable[str]) -> set[str]:
    """Which of `keys` ("person:12", "email:a@b.c", EVERYTHING) a change marked since the last
    refresh."""
    wanted = sorted(set(keys))
    rows = conn.execute(select(crm_mirror_stale.c.key).where(crm_mirror_stale.c.key.in_(wanted)))
    return {row.key for row in rows}


# `persons_unless_stale`'s statement, built once: one row always comes back (the stale flag,
# outer-joined with the addresses of the persons who have this one), so that "stale" and "nobody
# has this address" stay apart.
_STALE_FLAG = select(
    exists().where(crm_mirror_stale.c.key.in_(bindparam("keys", expanding=True))).label("stale")
).subquery()
_PERSONS_UNLESS_STALE = (
    select(
        _STALE_FLAG.c.stale,
        crm_mirror_persons.c.person_id,
        crm_mirror_persons.c.email,
        crm_mirror_persons.c.name,
        crm_mirror_persons.c.organization_id,
    )
    .select_from(
        _STALE_FLAG.outerjoin(
            crm_mirror_persons,
            crm_mirror_persons.c.person_id.in_(
                select(crm_mirror_persons.c.person_id)
                .where(crm_mirror_persons.c.email == bindparam("email"))
                .scalar_subquery()
            ),
        )
    )
    .order_by(crm_mirror_persons.c.person_id, crm_mirror_persons.c.email)
)


def persons_unless_stale(conn: Connection, email: str, keys: Iterable[str]) -> list[Person] | None:
    """The mirrored persons with this (lower-cased) address, each with all its addresses; None
    when a change marked one of `keys` (`stale`). One statement: it is asked for every address."""
    rows = conn.execute(_PERSONS_UNLESS_STALE, {"keys": sorted(set(keys)), "email": email}).all()
    if not rows or rows[0].stale:
        return None
    emails: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    organizations: dict[int, str | None] = {}
    for row in rows:
        if row.person_id is not None:
            emails.setdefault(row.person_id, []).append(row.email)
            names[row.person_id] = row.name
            organizations[row.person_id] = row.organization_id
    return [
        Person(id=pid, name=names[pid], emails=tuple(found), organization_id=organizations[pid])
        for pid, found in emails.items()
    ]


def knows_person(conn: Connection, person_id: int) -> bool:
    found = conn.execute(
        select(crm_mirror_persons.c.person_id)
        .where(crm_mirror_persons.c.person_id == person_id)
        .limit(1)
    ).first()
    return found is not None


def items_of_person(conn: Connection, person_id: int) -> list[Item]:
    rows = conn.execute(
        select(crm_mirror_items)
        .where(crm_mirror_items.c.person_id == person_id)
        .order_by(crm_mirror_items.c.kind, crm_mirror_items.c.item_id)
    )
    return [_item(row) for row in rows]


def _item(row: Any) -> Item:
    return Item(
        ref=ItemRef(ItemKind(row.kind), row.item_id),
        title=row.title,
        person_ids=frozenset({row.person_id}) if row.person_id is not None else frozenset(),
        created_at=row.created_at,
        status=ItemStatus(row.status),
        closed_at=row.closed_at,
    )


# -- writes --------------------------------------------------------------------------------------


def _person_rows(persons: Iterable[Person]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for person in persons:
        for email in person.emails:
            address = email.strip().lower()
            if address:
                rows[(address, person.id)] = {
                    "email": address,
                    "person_id": person.id,
                    "name": person.name,
                    "organization_id": person.organization_id,
                }
    return [rows[key] for key in sorted(rows)]


def _item_row(item: Item) -> dict[str, Any]:
    return {
        "kind": item.ref.kind.value,
        "item_id": item.ref.id,
        "person_id": min(item.person_ids) if item.person_ids else None,
        "title": item.title,
        "created_at": item.created_at,
        "status": item.status.value,
        "closed_at": item.closed_at,
    }


def _insert(conn: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    for start in range(0, len(rows), _CHUNK):
        conn.execute(table.insert(), list(rows[start : start + _CHUNK]))


def clear(conn: Connection) -> None:
    """Empty the mirror (a CRM too big to mirror: its rows would only age)."""
    conn.execute(delete(crm_mirror_persons))
    conn.execute(delete(crm_mirror_items))
    conn.execute(delete(crm_mirror_stale))


def replace_all(conn: Connection, persons: Iterable[Person], items: Iterable[Item]) -> None:
    """The mirror becomes exactly these persons and items."""
    clear(conn)
    _insert(conn, crm_mirror_persons, _person_rows(persons))
    by_ref = {(i.ref.kind.value, i.ref.id): _item_row(i) for i in items}
    _insert(conn, crm_mirror_items, [by_ref[key] for key in sorted(by_ref)])


def put_persons(conn: Connection, persons: Sequence[Person]) -> set[str]:
    """Replace these persons' addresses; returns the addresses they had before and have now
    (whose cached persons are stale)."""
    ids = sorted({p.id for p in persons})
    before: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        before.update(
            row.email
            for row in conn.execute(
                select(crm_mirror_persons.c.email).where(crm_mirror_persons.c.person_id.in_(chunk))
            )
        )
        conn.execute(delete(crm_mirror_persons).where(crm_mirror_persons.c.person_id.in_(chunk)))
    rows = _person_rows(persons)
    _insert(conn, crm_mirror_persons, rows)
    return before | {row["email"] for row in rows}


def drop_persons(conn: Connection, person_ids: Iterable[int]) -> None:
    """Forget these persons (deleted in the CRM); their items stay until listed again."""
    ids = sorted(set(person_ids))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        conn.execute(delete(crm_mirror_persons).where(crm_mirror_persons.c.person_id.in_(chunk)))


def put_items(conn: Connection, items: Iterable[Item]) -> set[int]:
    """Insert or replace these items; returns the persons whose items changed (old and new)."""
    by_ref = {(i.ref.kind.value, i.ref.id): _item_row(i) for i in items}
    if not by_ref:
        return set()
    persons = _persons_of(conn, list(by_ref))
    persons.update(r["person_id"] for r in by_ref.values() if r["person_id"] is not None)
    rows = [by_ref[key] for key in sorted(by_ref)]
    for start in range(0, len(rows), _CHUNK):
        upsert(conn, crm_mirror_items, ("kind", "item_id"), rows[start : start + _CHUNK])
    return persons


def drop_items(conn: Connection, refs: Iterable[ItemRef]) -> set[int]:
    """Remove these items; returns the persons they belonged to."""
    keys = sorted({(r.kind.value, r.id) for r in refs})
    persons = _persons_of(conn, keys)
    for kind in {k for k, _ in keys}:
        ids = [i for k, i in keys if k == kind]
        for start in range(0, len(ids), _CHUNK):
            conn.execute(
                delete(crm_mirror_items).where(
                    crm_mirror_items.c.kind == kind,
                    crm_mirror_items.c.item_id.in_(ids[start : start + _CHUNK]),
                )
            )
    return persons


def replace_kind(conn: Connection, kind: ItemKind, items: Iterable[Item]) -> set[int]:
    """The mirror's items of `kind` become exactly `items`; returns the persons whose items of
    that kind changed (added, removed or different)."""
    new = {i.ref.id: _item_row(i) for i in items if i.ref.kind is kind}
    old = {
        row.item_id: dict(row._mapping)
        for row in conn.execute(
            select(crm_mirror_items).where(crm_mirror_items.c.kind == kind.value)
        )
    }
    changed = {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    persons = {
        row["person_id"]
        for key in changed
        for row in (old.get(key), new.get(key))
        if row is not None and row["person_id"] is not None
    }
    drop_items(conn, [ItemRef(kind, key) for key in changed if key in old])
    _insert(conn, crm_mirror_items, [new[key] for key in sorted(changed) if key in new])
    return persons


def purge_deleted(conn: Connection, before: datetime) -> None:
    """Drop items deleted before `before` (the CRM lists deleted deals for 30 days only)."""
    conn.execute(
        delete(crm_mirror_items).where(
            crm_mirror_items.c.status == ItemStatus.DELETED.value,
            crm_mirror_items.c.closed_at < before,
        )
    )


def _persons_of(conn: Connection, keys: Sequence[tuple[str, str]]) -> set[int]:
    found: set[int] = set()
    for kind in {k for k, _ in keys}:
        ids = [i for k, i in keys if k == kind]
        for start in range(0, len(ids), _CHUNK):
            rows = conn.execute(
                select(crm_mirror_items.c.person_id).where(
                    crm_mirror_items.c.kind == kind,
                    crm_mirror_items.c.item_id.in_(ids[start : start + _CHUNK]),
                )
            )
            found.update(row.person_id for row in rows if row.person_id is not None)
    return found


def mark_stale(
    conn: Connection,
    now: datetime,
    *,
    person_ids: Iterable[int] = (),
    emails: Iterable[str] = (),
    everything: bool = False,
) -> None:
    """A change the mirror has not read yet: it does not answer for these until a refresh that
    started after `now` has listed them."""
    keys = {f"person:{p}" for p in person_ids} | {f"email:{e.strip().lower()}" for e in emails}
    if everything:
        keys.add(EVERYTHING)
    rows = [{"key": key, "marked_at": now} for key in sorted(keys)]
    if rows:
        upsert(conn, crm_mirror_stale, "key", rows)


def clear_stale(conn: Connection, before: datetime) -> None:
    """Changes marked before `before` were read by the refresh that started then."""
    conn.execute(delete(crm_mirror_stale).where(crm_mirror_stale.c.marked_at < before))


class MirrorChanges(Protocol):
    """What a listing brings to the mirror: everything (`full`) or what changed; `whole` are
    kinds listed whole (their rows are replaced), `gone` items no longer listed."""

    @property
    def full(self) -> bool: ...

    @property
    def persons(self) -> Sequence[Person]: ...

    @property
    def items(self) -> Sequence[Item]: ...

    @property
    def gone(self) -> Sequence[Item]: ...

    @property
    def whole(self) -> frozenset[ItemKind]: ...


class MirrorTables:
    """The mirror's rows in `store`, as `maillink.crm.mirror.MirroredCRM` asks for them: each
    method one short transaction."""

    def __init__(self, store: Store):
        self.store = store

    def state(self) -> str | None:
        with self.store.engine.connect() as conn:
            return read_state(conn)

    def swap(self, old: str | None, new: str) -> bool:
        with self.store.transaction() as conn:
            return swap_state(conn, old, new)

    def persons(self, email: str) -> list[Person] | None:
        """The mirrored persons with this address; None when a change marked it stale (one
        statement: it is asked for every address a round meets)."""
        with self.store.engine.connect() as conn:
            return persons_unless_stale(conn, email, [EVERYTHING, f"email:{email}"])

    def items(self, person_id: int) -> list[Item] | None:
        """The person's mirrored items; None when a change marked them stale, or when the
        mirror does not know the person (newer than its last refresh: its items may be too)."""
        with self.store.engine.connect() as conn:
            if stale(conn, [EVERYTHING, f"person:{person_id}"]):
                return None
            if not knows_person(conn, person_id):
                return None
            return items_of_person(conn, person_id)

    def add_person(self, person: Person) -> None:
        with self.store.transaction() as conn:
            put_persons(conn, [person])

    def write(
        self,
        old: str | None,
        new: str,
        changes: MirrorChanges | None,
        started: datetime,
        deleted_before: datetime,
    ) -> tuple[set[str], set[int]] | None:
        """In one transaction: swap the state (None, nothing written, when another refresh
        moved it first); then write `changes` (None: a CRM too big, the mirror is emptied) and
        forget the cached facts they make stale. Returns those addresses and persons."""
        emails: set[str] = set()
        person_ids: set[int] = set()
        with self.store.engine.connect() as conn, conn.begin() as transaction:
            if not swap_state(conn, old, new):
                transaction.rollback()
                return None
            if changes is None:
                clear(conn)
                return emails, person_ids
            if changes.full:
                replace_all(conn, changes.persons, changes.items)
                forget_all(conn)
            else:
                emails = put_persons(conn, changes.persons)
                kept = [i for i in changes.items if i.ref.kind not in changes.whole]
                person_ids = put_items(conn, kept)
                for kind in sorted(changes.whole):
                    listed = [i for i in changes.items if i.ref.kind is kind]
                    person_ids |= replace_kind(conn, kind, listed)
                person_ids |= drop_items(conn, [i.ref for i in changes.gone])
                person_ids |= {p for i in changes.gone for p in i.person_ids}
                forget(conn, emails=emails, person_ids=person_ids)
            purge_deleted(conn, deleted_before)
            clear_stale(conn, started)
        return emails, person_ids
