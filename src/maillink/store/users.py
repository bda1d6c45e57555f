"""Web users of `maillink serve`: their sign-in tokens (kept as hashes) and whose mailboxes are whose.

A sign-in token is shown once, when it is issued; the store keeps only its SHA-256, so a copy of the
database signs nobody in. A rep sees the mailboxes they connected and those whose address is theirs;
an admin sees every mailbox.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, delete, insert, or_, select, update

from maillink.store.schema import accounts, web_users


@dataclass(frozen=True)
class WebUser:
    id: int
    email: str
    is_admin: bool
    created_at: datetime
    last_sign_in_at: datetime | None
    token_hash: str = field(repr=False)  # changes when a new sign-in link is issued


def hash_token(token: str) -> str:
    """The form a sign-in token is stored and looked up in."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_email(email: str) -> str:
    """The address, trimmed and lower-cased; ValueError when it is not one."""
    address = email.strip().lower()
    local, at, domain = address.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in address):
        raise ValueError(f"{email!r} is not an email address")
    return address


def _user(row: object) -> WebUser:
    m = row._mapping  # type: ignore[attr-defined]
    return WebUser(
        id=m["id"],
        email=m["email"],
        is_admin=bool(m["is_admin"]),
        created_at=m["created_at"],
        last_sign_in_at=m["last_sign_in_at"],
        token_hash=m["token_hash"],
    )


def issue(conn: Connection, email: str, *, is_admin: bool) -> tuple[WebUser, str]:
    """Add the user, or give an existing one a new token (the old one stops working).

    Returns the user and the token, which is not stored anywhere: hand it over once.
    """
    address = normalize_email(email)
    token = secrets.token_urlsafe(32)
    digest = hash_token(token)
    existing = get_by_email(conn, address)
    if existing is None:
        conn.execute(
            insert(web_users).values(
                email=address,
                is_admin=is_admin,
                token_hash=digest,
                created_at=datetime.now(UTC),
            )
        )
    else:
        conn.execute(
            update(web_users)
            .where(web_users.c.id == existing.id)
            .values(is_admin=is_admin, token_hash=digest)
        )
    user = get_by_email(conn, address)
    assert user is not None
    return user, token


def by_token(conn: Connection, token: str) -> WebUser | None:
    """The user this sign-in token belongs to, if any."""
    if not token:
        return None
    row = conn.execute(select(web_users).where(web_users.c.token_hash == hash_token(token))).first()
    return _user(row) if row else None


def signed_in(conn: Connection, user_id: int) -> None:
    conn.execute(
        update(web_users).where(web_users.c.id == user_id).values(last_sign_in_at=datetime.now(UTC))
    )


def get(conn: Connection, user_id: int) -> WebUser | None:
    row = conn.execute(select(web_users).where(web_users.c.id == user_id)).first()
    return _user(row) if row else None


def get_by_email(conn: Connection, email: str) -> WebUser | None:
    row = conn.execute(select(web_users).where(web_users.c.email == email.strip().lower())).first()
    return _user(row) if row else None


def all_users(conn: Connection) -> list[WebUser]:
    return [_user(row) for row in conn.execute(select(web_users).order_by(web_users.c.email))]


def remove(conn: Connection, email: str) -> bool:
    """Forget the user (their sign-in link and sessions stop working); their mailboxes stay."""
    user = get_by_email(conn, email)
    if user is None:
        return False
    conn.execute(
        update(accounts).where(accounts.c.owner_user_id == user.id).values(owner_user_id=None)
    )
    conn.execute(delete(web_users).where(web_users.c.id == user.id))
    return True


# -- who owns which mailbox ----------------------------------------------------------------------


def _owned_by(user: WebUser) -> ColumnElement[bool]:
    # account addresses are stored lower-cased (accounts.upsert), as are users'
    return or_(accounts.c.owner_user_id == user.id, accounts.c.email == user.email)


def visible_account_ids(conn: Connection, user: WebUser) -> list[int] | None:
    """The ids of the mailboxes the user may see; None for an admin (every mailbox)."""
    if user.is_admin:
        return None
    return list(
        conn.execute(
            select(accounts.c.id).where(_owned_by(user)).order_by(accounts.c.email)
        ).scalars()
    )


def can_see_account(conn: Connection, user: WebUser, account_id: int) -> bool:
    if user.is_admin:
        return True
    found = conn.execute(
        select(accounts.c.id).where(accounts.c.id == account_id, _owned_by(user))
    ).first()
    return found is not None


def owner_of(conn: Connection, account_id: int) -> int | None:
    return conn.execute(
        select(accounts.c.owner_user_id).where(accounts.c.id == account_id)
    ).scalar()


def set_owner(conn: Connection, account_id: int, user_id: int | None) -> None:
    conn.execute(update(accounts).where(accounts.c.id == account_id).values(owner_user_id=user_id))


def owner_emails(conn: Connection) -> dict[int, str]:
    """The email of each mailbox's owner, by account id (mailboxes with an owner only)."""
    rows = conn.execute(
        select(accounts.c.id, web_users.c.email).join(
            web_users, web_users.c.id == accounts.c.owner_user_id
        )
    )
    return {account_id: email for account_id, email in rows}
