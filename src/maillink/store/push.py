"""Push subscriptions: the watches (Gmail) and subscriptions (Graph, later) maillink keeps itself.

One row per mailbox and watched resource. `renew_at` says when the subscription must be made or
renewed (NULL: nothing due); a daemon takes a due row with `claim`, a compare-and-set that moves
`renew_at` forward, so that when several daemons share the store only one calls the provider.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, or_, select, update

from maillink.store import cache
from maillink.store.accounts import ACTIVE
from maillink.store.schema import accounts, push_subscriptions

GMAIL_WATCH = "gmail_watch"
MAILBOX = "mailbox"  # the resource of a Gmail watch: the whole mailbox (its labels filter it)
PENDING, ACTIVE_WATCH, FAILED, STOPPED = "pending", "active", "failed", "stopped"

_t = push_subscriptions


@dataclass(frozen=True)
class Subscription:
    id: int
    account_id: int
    provider: str
    kind: str
    resource: str
    external_id: str | None
    state: str
    expires_at: datetime | None
    renew_at: datetime | None
    history_id: str | None
    last_error: str | None
    updated_at: datetime
    secret: str | None = None  # still encrypted


def _subscription(row: object) -> Subscription:
    m = row._mapping  # type: ignore[attr-defined]
    return Subscription(
        id=m["id"],
        account_id=m["account_id"],
        provider=m["provider"],
        kind=m["kind"],
        resource=m["resource"],
        external_id=m["external_id"],
        state=m["state"],
        expires_at=m["expires_at"],
        renew_at=m["renew_at"],
        history_id=m["history_id"],
        last_error=m["last_error"],
        updated_at=m["updated_at"],
        secret=m["secret"],
    )


def ensure_gmail_watches(conn: Connection, now: datetime) -> int:
    """A pending watch row, due now, for every active Gmail mailbox that has none; how many."""
    missing = conn.execute(
        select(accounts.c.id)
        .select_from(
            accounts.outerjoin(_t, and_(_t.c.account_id == accounts.c.id, _t.c.kind == GMAIL_WATCH))
        )
        .where(accounts.c.provider == "gmail", accounts.c.status == ACTIVE, _t.c.id.is_(None))
    ).scalars()
    rows = [
        {
            "account_id": account_id,
            "provider": "gmail",
            "kind": GMAIL_WATCH,
            "resource": MAILBOX,
            "state": PENDING,
            "renew_at": now,
            "updated_at": now,
        }
        for account_id in missing
    ]
    if rows:
        cache.insert_or_ignore(conn, _t, rows)  # another daemon may insert the same rows
    return len(rows)


def due_gmail_watches(
    conn: Connection, now: datetime, topic: str, limit: int = 100
) -> list[Subscription]:
    """The watches of active mailboxes to make or renew now: due (`renew_at` passed, new ones
    included), stopped while the mailbox was paused (it is active again), or made for another
    topic. The first two are left out once claimed (`claim` sets `renew_at` ahead)."""
    rows = conn.execute(
        select(_t)
        .join(accounts, accounts.c.id == _t.c.account_id)
        .where(
            _t.c.kind == GMAIL_WATCH,
            accounts.c.status == ACTIVE,
            or_(
                _t.c.renew_at <= now,
                and_(_t.c.state == STOPPED, _t.c.renew_at.is_(None)),
                and_(_t.c.state != PENDING, _t.c.external_id != topic),
            ),
        )
        .order_by(_t.c.renew_at, _t.c.id)
        .limit(limit)
    )
    return [_subscription(row) for row in rows]


def gmail_watches_to_stop(conn: Connection, *, all_active: bool = False) -> list[Subscription]:
    """Active watches whose mailbox is no longer active (paused, needs re-authorisation); every
    active watch when `all_active` (push was turned off)."""
    query = select(_t).where(_t.c.kind == GMAIL_WATCH, _t.c.state == ACTIVE_WATCH)
    if not all_active:
        query = query.join(accounts, accounts.c.id == _t.c.account_id).where(
            accounts.c.status != ACTIVE
        )
    return [_subscription(row) for row in conn.execute(query.order_by(_t.c.id))]


def claim(conn: Connection, seen: Subscription, until: datetime | None, now: datetime) -> bool:
    """Take `seen` for a provider call: True when this caller moved it (its `renew_at` to
    `until`; None while it is being stopped) before anyone else changed it; False when another
    daemon was first."""
    result = conn.execute(
        update(_t)
        .where(
            _t.c.id == seen.id,
            _t.c.state == seen.state,
            _t.c.renew_at.is_not_distinct_from(seen.renew_at),
            _t.c.updated_at == seen.updated_at,
        )
        .values(renew_at=until, updated_at=now)
    )
    return result.rowcount == 1


def watching(
    conn: Connection,
    subscription_id: int,
    *,
    external_id: str,
    expires_at: datetime,
    renew_at: datetime,
    history_id: str | None,
    now: datetime,
) -> None:
    """The provider accepted the watch: it lasts until `expires_at`, renewed at `renew_at`."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id)
        .values(
            state=ACTIVE_WATCH,
            external_id=external_id,
            expires_at=expires_at,
            renew_at=renew_at,
            history_id=history_id,
            last_error=None,
            updated_at=now,
        )
    )


def failed(
    conn: Connection,
    subscription_id: int,
    *,
    external_id: str,
    error: str,
    retry_at: datetime,
    now: datetime,
) -> None:
    """The provider refused or could not be reached: tried again at `retry_at`. A watch made
    earlier stays valid until its `expires_at`."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id)
        .values(
            state=FAILED,
            external_id=external_id,
            renew_at=retry_at,
            last_error=error[:2000],
            updated_at=now,
        )
    )


def stopped(
    conn: Connection, subscription_id: int, now: datetime, error: str | None = None
) -> None:
    """The watch is no more (stopped at the provider, or left to expire: `error` says why)."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id)
        .values(
            state=STOPPED,
            renew_at=None,
            expires_at=None,
            last_error=error[:2000] if error else None,
            updated_at=now,
        )
    )


def for_account(conn: Connection, account_id: int, kind: str = GMAIL_WATCH) -> list[Subscription]:
    rows = conn.execute(
        select(_t).where(_t.c.account_id == account_id, _t.c.kind == kind).order_by(_t.c.id)
    )
    return [_subscription(row) for row in rows]


def by_account(
    conn: Connection, account_ids: Iterable[int] | None = None
) -> dict[int, list[Subscription]]:
    """Every push subscription, by mailbox (of `account_ids` only, when given)."""
    query = select(_t).order_by(_t.c.account_id, _t.c.kind, _t.c.resource)
    if account_ids is not None:
        query = query.where(_t.c.account_id.in_(list(account_ids)))
    found: dict[int, list[Subscription]] = {}
    for row in conn.execute(query):
        subscription = _subscription(row)
        found.setdefault(subscription.account_id, []).append(subscription)
    return found


# -- Graph change notifications: one subscription per Microsoft mailbox and synced folder ----------
GRAPH_SUBSCRIPTION = "graph_subscription"


def ensure_graph_subscriptions(conn: Connection, folders: Iterable[str], now: datetime) -> int:
    """A pending row, due now, for every active Microsoft mailbox and folder that has none."""
    rows = []
    for folder in folders:
        missing = conn.execute(
            select(accounts.c.id)
            .select_from(
                accounts.outerjoin(
                    _t,
                    and_(
                        _t.c.account_id == accounts.c.id,
                        _t.c.kind == GRAPH_SUBSCRIPTION,
                        _t.c.resource == folder,
                    ),
                )
            )
            .where(
                accounts.c.provider == "microsoft", accounts.c.status == ACTIVE, _t.c.id.is_(None)
            )
        ).scalars()
        rows += [
            {
                "account_id": account_id,
                "provider": "microsoft",
                "kind": GRAPH_SUBSCRIPTION,
                "resource": folder,
                "state": PENDING,
                "renew_at": now,
                "updated_at": now,
            }
            for account_id in missing
        ]
    if rows:
        rows.sort(key=lambda row: (row["account_id"], row["resource"]))
        cache.insert_or_ignore(conn, _t, rows)
    return len(rows)


def due_graph_subscriptions(
    conn: Connection, now: datetime, folders: Iterable[str], limit: int = 100
) -> list[Subscription]:
    """The subscriptions of active mailboxes' synced folders to make or renew now: due, or
    stopped while the mailbox was paused (it is active again)."""
    rows = conn.execute(
        select(_t)
        .join(accounts, accounts.c.id == _t.c.account_id)
        .where(
            _t.c.kind == GRAPH_SUBSCRIPTION,
            _t.c.resource.in_(list(folders)),
            accounts.c.status == ACTIVE,
            or_(_t.c.renew_at <= now, and_(_t.c.state == STOPPED, _t.c.renew_at.is_(None))),
        )
        .order_by(_t.c.renew_at, _t.c.id)
        .limit(limit)
    )
    return [_subscription(row) for row in rows]


def graph_subscriptions_to_stop(
    conn: Connection, folders: Iterable[str], *, all_active: bool = False
) -> list[Subscription]:
    """Live subscriptions (active, or failed with an id) whose mailbox is no longer active or
    whose folder is no longer synced; every live one when `all_active` (push was turned off)."""
    query = select(_t).where(
        _t.c.kind == GRAPH_SUBSCRIPTION,
        _t.c.state.in_([ACTIVE_WATCH, FAILED]),
        _t.c.external_id.is_not(None),
    )
    if not all_active:
        query = query.join(accounts, accounts.c.id == _t.c.account_id).where(
            or_(accounts.c.status != ACTIVE, _t.c.resource.not_in(list(folders)))
        )
    return [_subscription(row) for row in conn.execute(query.order_by(_t.c.id))]


def by_external_ids(
    conn: Connection, external_ids: Iterable[str], kind: str = GRAPH_SUBSCRIPTION
) -> dict[str, Subscription]:
    """The subscriptions these provider ids name (unknown ids are left out)."""
    wanted = sorted(set(external_ids))
    if not wanted:
        return {}
    rows = conn.execute(select(_t).where(_t.c.kind == kind, _t.c.external_id.in_(wanted)))
    found = [_subscription(row) for row in rows]
    return {s.external_id: s for s in found if s.external_id is not None}


def subscribed(
    conn: Connection,
    subscription_id: int,
    *,
    external_id: str,
    secret: str,
    expires_at: datetime,
    renew_at: datetime,
    now: datetime,
) -> None:
    """The provider made or renewed the subscription `external_id` (its `secret` encrypted)."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id)
        .values(
            state=ACTIVE_WATCH,
            external_id=external_id,
            secret=secret,
            expires_at=expires_at,
            renew_at=renew_at,
            last_error=None,
            updated_at=now,
        )
    )


def subscription_failed(
    conn: Connection, subscription_id: int, *, error: str, retry_at: datetime, now: datetime
) -> None:
    """The provider refused the subscription call: tried again at `retry_at`; a subscription
    made earlier (its id and secret kept) stays valid until its `expires_at`."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id)
        .values(state=FAILED, renew_at=retry_at, last_error=error[:2000], updated_at=now)
    )


def renew_now(conn: Connection, subscription_id: int, now: datetime) -> None:
    """Make the subscription due now (a lifecycle notification asked for it)."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id, _t.c.state != STOPPED)
        .values(renew_at=now, updated_at=now)
    )


def forget_subscription(conn: Connection, subscription_id: int, now: datetime) -> None:
    """The provider removed the subscription: made again (a new id and secret), due now."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id, _t.c.state != STOPPED)
        .values(
            state=PENDING,
            external_id=None,
            secret=None,
            expires_at=None,
            renew_at=now,
            updated_at=now,
        )
    )
