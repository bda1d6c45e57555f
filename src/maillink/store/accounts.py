"""Connected mailboxes: their status, encrypted tokens and cursors.

Every change of the set of mailboxes or of their addresses (a mailbox connected, reconnected or
removed) sets a new `accounts_version` (a `crm_state` row) in the same transaction, so that a
process that keeps what it derived from all the mailboxes (the team's own addresses in the
linking policy) can tell with one indexed read that it is still current.

Each mailbox's lease row (`store.leases`) follows it here, in the same transaction: a mailbox
gets its row when it is connected (due at once), a mailbox that stops being active (paused,
needs re-authorisation) has its next run moved out of the due range (`PARKED`), and one that is
active again (reconnected, resumed) is due now. So the daemons' look for due mailboxes meets
only mailboxes they can take, and nobody has to look for accounts without a lease row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from maillink.store import cache
from maillink.store.outbox import WorkLeft, work_probes
from maillink.store.schema import accounts, crm_state, cursors, leases

ACTIVE = "active"
PAUSED = "paused"
NEEDS_REAUTH = "needs_reauth"
VERSION = "accounts_version"  # crm_state: changes whenever a mailbox or an address does
TEAM_REFRESH = "team_refresh_at"  # crm_state: when a daemon last re-listed the team members
MAILBOX_CURSOR = "mailbox"  # the incremental cursor of a mailbox (`sync.MAILBOX`)
# The next run of a mailbox that is not active: past any date a daemon will see, so its lease
# stays out of the due range of `ix_leases_due` until the mailbox is active again.
PARKED = datetime(9999, 1, 1, tzinfo=UTC)
# The next run of a new mailbox's lease row: due at once, before the mailboxes merely overdue
# (a person just connected it and waits for its first sync), whatever the daemons' clocks say.
AT_ONCE = datetime(1970, 1, 1, tzinfo=UTC)


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
    connected_via: str = "user"  # user | tenant | domain
    directory_id: str | None = None
    crm_user_id: str | None = None


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
        connected_via=m.get("connected_via") or "user",
        directory_id=m.get("directory_id"),
        crm_user_id=m.get("crm_user_id"),
    )


def upsert(
    conn: Connection,
    email: str,
    provider: str,
    token: str,
    scopes: str,
    aliases: tuple[str, ...] = (),
) -> Account:
    """Add a mailbox, or reconnect it (new token, active again); its cursors are kept. A new
    mailbox gets its lease row, due at once; a reconnected one is due now."""
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
            _schedule(conn, made.id, AT_ONCE)
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
            connected_via="user",  # the rep's own consent takes over from a team connection
        )
    )
    _schedule(conn, existing.id, datetime.now(UTC))
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


def set_status(
    conn: Connection,
    account_id: int,
    status: str,
    error: str | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """The mailbox's new status; its lease row follows: out of the due range (`PARKED`) unless
    active, due `now` when active."""
    conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(status=status, last_error=error)
    )
    _schedule(conn, account_id, (now or datetime.now(UTC)) if status == ACTIVE else PARKED)


def connected_via(conn: Connection, provider: str, via: str) -> list[Account]:
    """The mailboxes of `provider` connected through a team connection `via` (tenant, domain)."""
    rows = conn.execute(
        select(accounts)
        .where(accounts.c.provider == provider, accounts.c.connected_via == via)
        .order_by(accounts.c.email)
    )
    return [_account(row) for row in rows]


def add_member(
    conn: Connection,
    email: str,
    provider: str,
    via: str,
    directory_id: str | None,
    scopes: str,
) -> Account | None:
    """Add a directory member's mailbox, connected through the team connection `via`: no token
    of its own (NULL: the round uses the app's credentials), due at once. None when the address
    is already a mailbox (another connection, or added meanwhile by another process)."""
    email = email.lower()
    if get(conn, email) is not None:
        return None
    cache.insert_or_ignore(
        conn,
        accounts,
        [
            {
                "email": email,
                "provider": provider,
                "status": ACTIVE,
                "token": None,
                "scopes": scopes,
                "aliases": [],
                "created_at": datetime.now(UTC),
                "connected_via": via,
                "directory_id": directory_id,
            }
        ],
    )
    made = get(conn, email)
    if made is None or made.connected_via != via or made.provider != provider:
        return None
    _changed(conn)
    _schedule(conn, made.id, AT_ONCE)
    return made


def claim_team_refresh(conn: Connection, now: datetime, every: timedelta) -> bool:
    """Whether the caller re-lists the team connections' members now: the last refresh (a
    `crm_state` row) is `every` old or more, and this caller's compare-and-set moved it first,
    so only one daemon of several does it."""
    stamp = now.astimezone(UTC).isoformat()
    last = cache.get_state(conn, TEAM_REFRESH)
    if last is None:
        cache.insert_or_ignore(conn, crm_state, [{"name": TEAM_REFRESH, "value": stamp}])
        return cache.get_state(conn, TEAM_REFRESH) == stamp
    try:
        due = datetime.fromisoformat(last) + every <= now
    except ValueError:
        due = True
    return due and cache.replace_state(conn, TEAM_REFRESH, last, stamp)


def set_crm_user(conn: Connection, account_id: int, crm_user_id: str | None) -> None:
    """The CRM user who owns this mailbox's emails, set by hand; None: matched by address."""
    conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(crm_user_id=crm_user_id)
    )


def set_directory_id(conn: Connection, account_id: int, directory_id: str | None) -> None:
    conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(directory_id=directory_id)
    )


def _schedule(conn: Connection, account_id: int, next_run_at: datetime) -> None:
    """The mailbox's lease row with this next run: added free if it has none, else only its
    next run moved (its holder and generation are the holder's). A round that holds the mailbox
    meanwhile keeps this next run as it releases it (`leases.release` keeps a later one)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(leases).values(
        account_id=account_id, generation=0, failures=0, next_run_at=next_run_at, owner=None
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[leases.c.account_id],
            set_={"next_run_at": statement.excluded.next_run_at},
        )
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


@dataclass(frozen=True)
class RoundStart:
    """What a mailbox round reads before it asks the provider: the mailbox, its pending work
    and its cursor."""

    account: Account
    work: WorkLeft
    cursor: str | None
    cursor_name: str = MAILBOX_CURSOR


def round_start(
    conn: Connection, account_id: int, now: datetime, cursor_name: str = MAILBOX_CURSOR
) -> RoundStart | None:
    """The mailbox's row, its pending work (`outbox.work_left`) and its cursor in one statement
    (the idle round's only read); None when the mailbox is gone."""
    undecided, pending, due = work_probes(account_id, now)
    cursor = (
        select(cursors.c.value)
        .where(cursors.c.account_id == account_id, cursors.c.name == cursor_name)
        .scalar_subquery()
    )
    row = conn.execute(
        select(
            accounts,
            undecided.label("work_undecided"),
            pending.label("work_pending"),
            due.label("work_due"),
            cursor.label("cursor_value"),
        ).where(accounts.c.id == account_id)
    ).first()
    if row is None:
        return None
    work = WorkLeft(
        undecided=bool(row.work_undecided), pending=bool(row.work_pending), due=bool(row.work_due)
    )
    return RoundStart(_account(row), work, row.cursor_value, cursor_name)


def get_cursor(conn: Connection, account_id: int, name: str = "mailbox") -> str | None:
    return conn.execute(
        select(cursors.c.value).where(cursors.c.account_id == account_id, cursors.c.name == name)
    ).scalar()


def set_cursor(conn: Connection, account_id: int, value: str, name: str = "mailbox") -> None:
    row = {"account_id": account_id, "name": name, "value": value, "updated_at": datetime.now(UTC)}
    cache.upsert(conn, cursors, ("account_id", "name"), [row])


def delete_cursor(conn: Connection, account_id: int, name: str) -> None:
    conn.execute(delete(cursors).where(cursors.c.account_id == account_id, cursors.c.name == name))
