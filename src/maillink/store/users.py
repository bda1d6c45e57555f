"""Web users of `maillink serve`: sign-in links, sessions, and whose mailboxes are whose.

A sign-in token is shown once, when it is issued; the store keeps only its SHA-256, so a copy of the
database signs nobody in. A link signs in once, before it expires (a day by default); issuing a new
one ends the user's sessions. A session is a random id in the browser's cookie and a row here (its
hash): signing out, removing the user or rotating the keys deletes rows, and a cookie whose row is
gone signs nobody in. A rep sees the mailboxes they connected and those whose address is theirs;
an admin sees every mailbox.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from sqlalchemy import ColumnElement, Connection, delete, insert, or_, select, update

from maillink.store.schema import accounts, web_sessions, web_users

LINK_LIFETIME = timedelta(hours=24)  # a sign-in link's default lifetime
SESSION_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class WebUser:
    id: int
    email: str
    is_admin: bool
    created_at: datetime
    last_sign_in_at: datetime | None
    token_hash: str = field(repr=False)  # changes when a new sign-in link is issued
    link_expires_at: datetime | None = None  # None: the link no longer signs in
    link_used_at: datetime | None = None


class LinkState(Enum):
    """What a sign-in link is worth now."""

    VALID = "valid"
    USED = "used"
    EXPIRED = "expired"


def link_state(user: WebUser, now: datetime) -> LinkState:
    if user.link_used_at is not None:
        return LinkState.USED
    if user.link_expires_at is None or user.link_expires_at <= now:
        return LinkState.EXPIRED
    return LinkState.VALID


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
        link_expires_at=m["link_expires_at"],
        link_used_at=m["link_used_at"],
    )


def issue(
    conn: Connection,
    email: str,
    *,
    is_admin: bool,
    lifetime: timedelta = LINK_LIFETIME,
    now: datetime | None = None,
) -> tuple[WebUser, str]:
    """Add the user, or give an existing one a new link (the old one and their sessions end).

    Returns the user and the token, which is not stored anywhere: hand it over once. The link
    signs in once, until `now + lifetime`.
    """
    address = normalize_email(email)
    token = secrets.token_urlsafe(32)
    issued = now or datetime.now(UTC)
    link = {
        "token_hash": hash_token(token),
        "link_expires_at": issued + lifetime,
        "link_used_at": None,
    }
    existing = get_by_email(conn, address)
    if existing is None:
        conn.execute(
            insert(web_users).values(email=address, is_admin=is_admin, created_at=issued, **link)
        )
    else:
        conn.execute(
            update(web_users).where(web_users.c.id == existing.id).values(is_admin=is_admin, **link)
        )
        end_sessions(conn, existing.id)
    user = get_by_email(conn, address)
    assert user is not None
    return user, token


def new_link(
    conn: Connection,
    email: str,
    *,
    lifetime: timedelta = LINK_LIFETIME,
    now: datetime | None = None,
) -> tuple[WebUser, str] | None:
    """A new sign-in link for an existing user, role unchanged; None when there is no such user."""
    user = get_by_email(conn, email)
    if user is None:
        return None
    return issue(conn, user.email, is_admin=user.is_admin, lifetime=lifetime, now=now)


def by_token(conn: Connection, token: str) -> WebUser | None:
    """The user this sign-in token belongs to, if any, used or expired (see `link_state`)."""
    if not token:
        return None
    row = conn.execute(select(web_users).where(web_users.c.token_hash == hash_token(token))).first()
    return _user(row) if row else None


def use_link(conn: Connection, user: WebUser, now: datetime | None = None) -> bool:
    """Spend the user's sign-in link (`user.token_hash`): True once, while it is valid.

    One statement, so two browsers racing with the same link cannot both sign in.
    """
    at = now or datetime.now(UTC)
    spent = conn.execute(
        update(web_users)
        .where(
            web_users.c.id == user.id,
            web_users.c.token_hash == user.token_hash,
            web_users.c.link_used_at.is_(None),
            web_users.c.link_expires_at > at,
        )
        .values(link_used_at=at, last_sign_in_at=at)
    )
    return spent.rowcount == 1


# -- sessions ------------------------------------------------------------------------------------


def start_session(
    conn: Connection,
    user_id: int,
    *,
    lifetime: timedelta = SESSION_LIFETIME,
    now: datetime | None = None,
) -> str:
    """A new session of the user; returns its id for the cookie (the store keeps its hash)."""
    at = now or datetime.now(UTC)
    conn.execute(delete(web_sessions).where(web_sessions.c.expires_at <= at))
    session_id = secrets.token_urlsafe(32)
    conn.execute(
        insert(web_sessions).values(
            id_hash=hash_token(session_id), user_id=user_id, created_at=at, expires_at=at + lifetime
        )
    )
    return session_id


def session_user(conn: Connection, session_id: str, now: datetime | None = None) -> WebUser | None:
    """The user of this live session; None when it ended, expired or never was."""
    if not session_id:
        return None
    row = conn.execute(
        select(web_users)
        .join(web_sessions, web_sessions.c.user_id == web_users.c.id)
        .where(
            web_sessions.c.id_hash == hash_token(session_id),
            web_sessions.c.expires_at > (now or datetime.now(UTC)),
        )
    ).first()
    return _user(row) if row else None


def end_session(conn: Connection, session_id: str) -> None:
    conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == hash_token(session_id)))


def end_sessions(conn: Connection, user_id: int) -> int:
    """End every session of the user; returns how many there were."""
    ended = conn.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id))
    return int(ended.rowcount or 0)


def end_all_sessions(conn: Connection) -> int:
    """End every session of every user (`maillink keys rotate`); returns how many there were."""
    ended = conn.execute(delete(web_sessions))
    return int(ended.rowcount or 0)


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
    end_sessions(conn, user.id)
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
