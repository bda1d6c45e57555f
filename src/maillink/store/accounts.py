"""Connected mailboxes: their status, encrypted tokens and cursors.

Every change of the set of mailboxes or of their addresses (a mailbox connected, reconnected or
removed) sets a new `accounts_version` (a `crm_state` row) in the same transaction, so that a
process that keeps what it derived from all the mailboxes (the team's own addresses in the
linking policy) can tell with one indexed read that it is still current.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, select, update

from maillink.store import cache
from maillink.store.schema import accounts, cursors

ACTIVE = "active"
PAUSED = "paused"
NEEDS_REAUTH = "needs_reauth"
VERSION = "accounts_version"  # crm_state: changes whenever a mailbox or an address does


@dataclass(frozen=True)
class Account:
    id: int
    email: str
    provider: str
    status: str
    token: str | None  # still encrypted
    scopes: str
    aliases: tuple[str, ...]
    created_at: datetime
    last_sync_at: datetime | None
    last_error: str | None
    backfill_since: datetime | None


def _account(row: object) -> Account:
    m = row._mapping  # type: ignore[attr-defined]
    return Account(
        id=m["id"],
        email=m["email"],
        provider=m["provider"],
        status=m["status"],
        token=m["token"],
        scopes=m["scopes"],
        aliases=tuple(m["aliases"] or ()),
        created_at=m["created_at"],
        last_sync_at=m["last_sync_at"],
        last_error=m["last_error"],
        backfill_since=m["backfill_since"],
    )


def upsert(
    conn: Connection,
    email: str,
    provider: str,
    token: str,
    scopes: str,
    aliases: tuple[str, ...] = (),
) -> Account:
    """Add a mailbox, or reconnect it (new token, active again); its cursors are kept."""
    email = email.lower()
    existing = get(conn, email)
    _changed(conn)
    if existing is None:
        # Connected twice at the same moment (two browser tabs): the second insert is left
        # out and the second connection updates the row as a reconnection does.
        cache.insert_or_ignore(
            conn,
            accounts,
            [
                {
                    "email": email,
                    "provider": provider,
                    "status": ACTIVE,
                    "token": token,
                    "scopes": scopes,
                    "aliases": list(aliases),
                    "created_at": datetime.now(UTC),
                }
            ],
        )
        made = get(conn, email)
        assert made is not None
        if made.token == token:
            return made
        existing = made
    conn.execute(
        update(accounts)
        .where(accounts.c.id == existing.id)
        .values(
            provider=provider,
            status=ACTIVE,
            token=token,
            scopes=scopes,
            aliases=list(aliases) or list(existing.aliases),
            last_error=None,
        )
    )
    account = get(conn, email)
    assert account is not None
    return account


def get(conn: Connection, email: str) -> Account | None:
    row = conn.execute(select(accounts).where(accounts.c.email == email.lower())).first()
    return _account(row) if row else None


def get_by_id(conn: Connection, account_id: int) -> Account | None:
    row = conn.execute(select(accounts).where(accounts.c.id == account_id)).first()
    return _account(row) if row else None


def all_accounts(conn: Connection) -> list[Account]:
    return [_account(row) for row in conn.execute(select(accounts).order_by(accounts.c.email))]


def last_syncs(conn: Connection) -> list[tuple[int, datetime]]:
    """(mailbox id, when it last finished a round without error) of the mailboxes that did."""
    rows = conn.execute(
        select(accounts.c.id, accounts.c.last_sync_at).where(accounts.c.last_sync_at.is_not(None))
    )
    return [(account_id, when) for account_id, when in rows]


def set_status(conn: Connection, account_id: int, status: str, error: str | None = None) -> None:
    conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(status=status, last_error=error)
    )


def set_token(conn: Connection, account_id: int, token: str) -> None:
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(token=token))


def synced(conn: Connection, account_id: int, error: str | None = None) -> None:
    values: dict[str, object] = {"last_error": error}
    if error is None:
        values["last_sync_at"] = datetime.now(UTC)
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))


def set_backfill_since(conn: Connection, account_id: int, since: datetime | None) -> None:
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(backfill_since=since))


def remove(conn: Connection, account_id: int) -> None:
    """Forget the mailbox, its tokens, cursors, threads and messages (CRM activities stay)."""
    conn.execute(delete(accounts).where(accounts.c.id == account_id))
    _changed(conn)


def _changed(conn: Connection) -> None:
    cache.set_state(conn, VERSION, uuid.uuid4().hex)


def version(conn: Connection) -> str | None:
    """The mailboxes' version: a new value whenever one is connected, reconnected or removed
    (None until the first such change)."""
    return cache.get_state(conn, VERSION)


def get_cursor(conn: Connection, account_id: int, name: str = "mailbox") -> str | None:
    return conn.execute(
        select(cursors.c.value).where(cursors.c.account_id == account_id, cursors.c.name == name)
    ).scalar()


def set_cursor(conn: Connection, account_id: int, value: str, name: str = "mailbox") -> None:
    row = {"account_id": account_id, "name": name, "value": value, "updated_at": datetime.now(UTC)}
    cache.upsert(conn, cursors, ("account_id", "name"), [row])


def delete_cursor(conn: Connection, account_id: int, name: str) -> None:
    conn.execute(delete(cursors).where(cursors.c.account_id == account_id, cursors.c.name == name))
