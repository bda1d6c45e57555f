"""The outbox rows a recording claims: one activity per email, team-wide.

Two daemons recording the same email (it reached two connected mailboxes) at the same moment
both commit: insert-or-ignore and compare-and-set, then the claims that lost are claimed again
from the row that won. The first mailbox that stored an email owns its activity; the same email
in another connected mailbox is a duplicate and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, select, update

from maillink.model import ItemRef
from maillink.store import cache
from maillink.store.schema import activities, messages

_CHUNK = 500  # bound on the size of IN (...) lists
_CLAIM_ROUNDS = 5  # re-reads of outbox rows that other daemons changed meanwhile (one is usual)


@dataclass(frozen=True)
class ActivityClaim:
    """The activity one decided email wants: `desired` (a draft's JSON), or None when its
    decision writes no activity."""

    message_row_id: int
    key: str  # the email's maillink-id
    desired: dict[str, Any] | None


@dataclass(frozen=True)
class OwnedElsewhere:
    """The email's activity belongs to another stored copy of it: that copy's decision writes it."""

    key: str
    account_id: int | None  # None: the owner's message is not found any more
    provider_id: str | None

    def describe(self) -> str:
        if self.account_id is None:
            return "another mailbox"
        return f"message {self.provider_id} of account {self.account_id}"


def delivered_links(conn: Connection, keys: Iterable[str]) -> dict[str, frozenset[ItemRef]]:
    """The items each of these emails' activities already carries in the CRM: those created
    there whose latest version was delivered (a pending version's items are not the CRM's yet).
    """
    wanted = sorted(set(keys))
    found: dict[str, frozenset[ItemRef]] = {}
    for start in range(0, len(wanted), _CHUNK):
        for key, desired in conn.execute(
            select(activities.c.key, activities.c.desired).where(
                activities.c.key.in_(wanted[start : start + _CHUNK]),
                activities.c.crm_id.is_not(None),
                activities.c.delivered_version >= activities.c.desired_version,
            )
        ):
            found[key] = frozenset(ItemRef.parse(ref) for ref in desired.get("items", ()))
    return found


def claim_activities(
    conn: Connection, claims: Sequence[ActivityClaim], now: datetime
) -> list[OwnedElsewhere | None]:
    """Put each claim's activity in the outbox; for each claim, None when it is this email's to
    write (or writes nothing), or whose it is when another stored copy owns it."""
    outcomes: list[OwnedElsewhere | None] = [None] * len(claims)
    pending = list(range(len(claims)))
    for _ in range(_CLAIM_ROUNDS):
        round_ = _ClaimRound(
            conn, [claims[i].key for i in pending if claims[i].desired is not None]
        )
        for i in pending:
            outcomes[i] = round_.claim(claims[i], now)
        lost = round_.write()
        if not lost:
            return outcomes
        pending = [i for i in pending if claims[i].key in lost]
    raise RuntimeError(
        f"the outbox rows of {len(pending)} emails kept changing under this recording"
    )


class _ClaimRound:
    """The outbox rows of one recording: read at once, changed in memory, written at once."""

    def __init__(self, conn: Connection, keys: Sequence[str]) -> None:
        self.conn = conn
        self.existing: dict[str, tuple[int | None, Any, int]] = {}
        wanted = sorted(set(keys))
        for start in range(0, len(wanted), _CHUNK):
            for key, owner, desired, version in conn.execute(
                select(
                    activities.c.key,
                    activities.c.owner_message_id,
                    activities.c.desired,
                    activities.c.desired_version,
                ).where(activities.c.key.in_(wanted[start : start + _CHUNK]))
            ):
                self.existing[key] = (owner, desired, version)
        self.read = dict(self.existing)  # as read: the updates are compare-and-set on it
        self.inserts: dict[str, dict[str, Any]] = {}
        self.updates: dict[str, dict[str, Any]] = {}

    def claim(self, claim: ActivityClaim, now: datetime) -> OwnedElsewhere | None:
        """Put the activity this claim wants in the outbox (or say whose it is)."""
        desired = claim.desired
        if desired is None:
            return None
        key, row_id = claim.key, claim.message_row_id
        existing = self.existing.get(key)
        if existing is None:
            self.inserts[key] = {
                "key": key,
                "owner_message_id": row_id,
                "desired": desired,
                "desired_version": 1,
                "delivered_version": 0,
                "attempts": 0,
                "updated_at": now,
            }
            self.existing[key] = (row_id, desired, 1)
            return None
        owner, stored, version = existing
        if owner not in (None, row_id):
            found = self.conn.execute(
                select(messages.c.account_id, messages.c.provider_id).where(messages.c.id == owner)
            ).first()
            if found is None:
                return OwnedElsewhere(key, None, None)
            return OwnedElsewhere(key, found.account_id, found.provider_id)
        if stored != desired:
            if key in self.inserts:  # created by this recording: still its first version
                self.inserts[key].update(owner_message_id=row_id, desired=desired)
                self.existing[key] = (row_id, desired, version)
                return None
            self.updates[key] = {
                "b_key": key,
                "b_owner": row_id,
                "b_desired": desired,
                "b_version": version + 1,
                "b_read_owner": self.read[key][0],
                "b_read_version": self.read[key][2],
                "b_updated_at": now,
            }
            self.existing[key] = (row_id, desired, version + 1)
        return None

    def write(self) -> set[str]:
        """Write the claims; returns the keys whose row another writer took meanwhile (its
        insert came first, or it changed the row since it was read): those are not written."""
        if self.inserts:
            cache.insert_or_ignore(
                self.conn, activities, [self.inserts[k] for k in sorted(self.inserts)]
            )
        if self.updates:
            self.conn.execute(
                update(activities)
                .where(
                    activities.c.key == bindparam("b_key"),
                    activities.c.desired_version == bindparam("b_read_version"),
                    activities.c.owner_message_id.is_not_distinct_from(
                        bindparam("b_read_owner", type_=Integer)
                    ),
                )
                .values(
                    owner_message_id=bindparam("b_owner"),
                    desired=bindparam("b_desired"),
                    desired_version=bindparam("b_version"),
                    next_attempt_at=None,
                    updated_at=bindparam("b_updated_at"),
                ),
                [self.updates[k] for k in sorted(self.updates)],
            )
        return self._lost()

    def _lost(self) -> set[str]:
        """The written keys whose row is not what this recording wrote."""
        written = {k: v["owner_message_id"] for k, v in self.inserts.items()}
        written.update({k: v["b_owner"] for k, v in self.updates.items()})
        wanted = sorted(written)
        kept: set[str] = set()
        for start in range(0, len(wanted), _CHUNK):
            rows = self.conn.execute(
                select(
                    activities.c.key, activities.c.owner_message_id, activities.c.desired_version
                ).where(activities.c.key.in_(wanted[start : start + _CHUNK]))
            )
            # A message's id is its own: a row that names this recording's message at the
            # version it wrote is the one it wrote.
            kept.update(
                key
                for key, owner, version in rows
                if (owner, version) == (written[key], self.existing[key][2])
            )
        return set(wanted) - kept
