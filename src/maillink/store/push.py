"""Push subscriptions: the watches (Gmail) and subscriptions (Graph) maillink keeps itself.

One row per mailbox and watched resource (Gmail: the whole mailbox; Graph: each synced folder),
of one `kind`. `renew_at` says when the subscription must be made or renewed (NULL: nothing due);
a daemon takes a due row with `claim`, a compare-and-set that moves `renew_at` forward, so that
when several daemons share the store only one calls the provider. `target` is what the
subscription was made for (Gmail: the Pub/Sub topic; Graph: the notification URL): a live row
whose target is not the configured one is due at once, to be pointed at the new one.

The operations are the same for both kinds; `kind` says which rows, and `KINDS` which provider
a kind belongs to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, or_, select, update

from maillink.store import cache
from maillink.store.accounts import ACTIVE
from maillink.store.schema import accounts, push_subscriptions

GMAIL_WATCH = "gmail_watch"
GRAPH_SUBSCRIPTION = "graph_subscription"
KINDS = {GMAIL_WATCH: "gmail", GRAPH_SUBSCRIPTION: "microsoft"}  # kind -> provider
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
    target: str | None = None  # the topic (Gmail) or notification URL (Graph) it was made for

    @property
    def live(self) -> bool:
        """Made at the provider and maybe still there (active, or failed to renew since)."""
        return (
            self.state in (ACTIVE_WATCH, FAILED)
            and self.external_id is not None
            and self.expires_at is not None
        )


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
        target=m["target"],
    )


def ensure(conn: Connection, kind: str, resources: Sequence[str], now: datetime) -> int:
    """A pending row, due now, for every active mailbox of the kind's provider and every
    resource that has none; how many were added (another daemon may add the same: ignored)."""
    rows = []
    for resource in resources:
        missing = conn.execute(
            select(accounts.c.id)
            .select_from(
                accounts.outerjoin(
                    _t,
                    and_(
                        _t.c.account_id == accounts.c.id,
                        _t.c.kind == kind,
                        _t.c.resource == resource,
                    ),
                )
            )
            .where(
                accounts.c.provider == KINDS[kind],
                accounts.c.status == ACTIVE,
                _t.c.id.is_(None),
            )
        ).scalars()
        rows += [
            {
                "account_id": account_id,
                "provider": KINDS[kind],
                "kind": kind,
                "resource": resource,
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


def due(
    conn: Connection,
    kind: str,
    now: datetime,
    resources: Sequence[str],
    target: str,
    limit: int = 100,
) -> list[Subscription]:
    """The rows of active mailboxes' `resources` to make or renew now: due (`renew_at` passed,
    new ones included), stopped while the mailbox was paused (it is active again), or active
    for another target than `target` (the configuration changed). The first two are left out
    once claimed (`claim` sets `renew_at` ahead); a failed one waits for its retry."""
    rows = conn.execute(
        select(_t)
        .join(accounts, accounts.c.id == _t.c.account_id)
        .where(
            _t.c.kind == kind,
            _t.c.resource.in_(list(resources)),
            accounts.c.status == ACTIVE,
            or_(
                _t.c.renew_at <= now,
                and_(_t.c.state == STOPPED, _t.c.renew_at.is_(None)),
                and_(_t.c.state == ACTIVE_WATCH, _t.c.target.is_distinct_from(target)),
            ),
        )
        .order_by(_t.c.renew_at, _t.c.id)
        .limit(limit)
    )
    return [_subscription(row) for row in rows]


def to_stop(
    conn: Connection, kind: str, resources: Sequence[str], *, all_live: bool = False
) -> list[Subscription]:
    """Live rows (see `Subscription.live`) whose mailbox is no longer active or whose resource
    is no longer watched; every live one when `all_live` (push was turned off)."""
    query = select(_t).where(
        _t.c.kind == kind,
        _t.c.state.in_([ACTIVE_WATCH, FAILED]),
        _t.c.external_id.is_not(None),
        _t.c.expires_at.is_not(None),
    )
    if not all_live:
        query = query.join(accounts, accounts.c.id == _t.c.account_id).where(
            or_(accounts.c.status != ACTIVE, _t.c.resource.not_in(list(resources)))
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


def made(
    conn: Connection,
    subscription_id: int,
    *,
    external_id: str,
    target: str,
    expires_at: datetime,
    renew_at: datetime,
    now: datetime,
    secret: str | None = None,
    history_id: str | None = None,
) -> None:
    """The provider made or renewed the subscription `external_id` for `target`: it lasts until
    `expires_at`, renewed at `renew_at` (Graph's `secret` encrypted; Gmail's `history_id`)."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id)
        .values(
            state=ACTIVE_WATCH,
            external_id=external_id,
            target=target,
            secret=secret,
            expires_at=expires_at,
            renew_at=renew_at,
            history_id=history_id,
            last_error=None,
            updated_at=now,
        )
    )


def failed(
    conn: Connection, subscription_id: int, *, error: str, retry_at: datetime, now: datetime
) -> None:
    """The provider refused or could not be reached: tried again at `retry_at`. A subscription
    made earlier (its id, target and secret kept) stays valid until its `expires_at`."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id)
        .values(state=FAILED, renew_at=retry_at, last_error=error[:2000], updated_at=now)
    )


def stopped(
    conn: Connection, subscription_id: int, now: datetime, error: str | None = None
) -> None:
    """The subscription is no more (stopped at the provider, or left to expire: `error` says
    why)."""
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


def renew_now(conn: Connection, subscription_id: int, now: datetime) -> None:
    """Make the subscription due now (a lifecycle notification asked for it)."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id, _t.c.state != STOPPED)
        .values(renew_at=now, updated_at=now)
    )


def forget(conn: Connection, subscription_id: int, now: datetime) -> None:
    """The provider removed the subscription: made again (a new id and secret), due now."""
    conn.execute(
        update(_t)
        .where(_t.c.id == subscription_id, _t.c.state != STOPPED)
        .values(
            state=PENDING,
            external_id=None,
            secret=None,
            target=None,
            expires_at=None,
            renew_at=now,
            updated_at=now,
        )
    )


def for_account(conn: Connection, account_id: int, kind: str) -> list[Subscription]:
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
