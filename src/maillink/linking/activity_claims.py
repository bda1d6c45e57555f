"""The outbox rows of a recording: one activity per email, team-wide, claimed so that two
daemons recording the same email (it reached two connected mailboxes) at the same moment both
commit: insert-or-ignore and compare-and-set, then the claims that lost are decided again from
the row that won.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, select, update

from maillink.crm.activity import draft_for, draft_to_json
from maillink.linking.facts import Decision, Reason
from maillink.model import Message
from maillink.store import cache
from maillink.store.schema import activities, messages

_CLAIM_ROUNDS = 5  # re-reads of outbox rows that other daemons changed meanwhile (one is usual)


def claim_activities(
    conn: Connection, replayed: Sequence[tuple[Any, Message, Decision]], now: datetime
) -> list[Decision]:
    """Each replayed decision once its email's activity is claimed in the outbox.

    The same email may reach two mailboxes that two daemons record at the same moment: the
    outbox row is written so that the other's write cannot fail this one (insert-or-ignore,
    compare-and-set), and the claims that lost are decided again from the row that won.
    """
    decisions = [decision for _, _, decision in replayed]
    pending = list(range(len(replayed)))
    for _ in range(_CLAIM_ROUNDS):
        claims = ActivityClaims(
            conn,
            [replayed[i][1].key for i in pending if replayed[i][2].reason.writes_activity],
        )
        for i in pending:
            row, message, decision = replayed[i]
            decisions[i] = claims.claim(row, message, decision, now)
        lost = claims.write()
        if not lost:
            return decisions
        pending = [i for i in pending if replayed[i][1].key in lost]
    raise RuntimeError(
        f"the outbox rows of {len(pending)} emails kept changing under this recording"
    )


class ActivityClaims:
    """The outbox rows of one recording: read at once, changed in memory, written at once.

    One activity per email, team-wide: the first mailbox that stored an email owns its
    activity; the same email in another connected mailbox is recorded as a duplicate and writes
    nothing.
    """

    def __init__(self, conn: Connection, keys: Sequence[str]) -> None:
        self.conn = conn
        self.existing: dict[str, tuple[int | None, Any, int]] = {}
        wanted = sorted(set(keys))
        for start in range(0, len(wanted), 500):
            for key, owner, desired, version in conn.execute(
                select(
                    activities.c.key,
                    activities.c.owner_message_id,
                    activities.c.desired,
                    activities.c.desired_version,
                ).where(activities.c.key.in_(wanted[start : start + 500]))
            ):
                self.existing[key] = (owner, desired, version)
        self.read = dict(self.existing)  # as read: the updates are compare-and-set on it
        self.inserts: dict[str, dict[str, Any]] = {}
        self.updates: dict[str, dict[str, Any]] = {}

    def claim(
        self, row: Mapping[str, Any], message: Message, decision: Decision, now: datetime
    ) -> Decision:
        """Put the activity this decision wants in the outbox (or say whose it is)."""
        if not decision.reason.writes_activity:
            return decision
        key = message.key
        desired = draft_to_json(draft_for(message, decision.person_ids, decision.items))
        existing = self.existing.get(key)
        if existing is None:
            self.inserts[key] = {
                "key": key,
                "owner_message_id": row["id"],
                "desired": desired,
                "desired_version": 1,
                "delivered_version": 0,
                "attempts": 0,
                "updated_at": now,
            }
            self.existing[key] = (row["id"], desired, 1)
            return decision
        owner, stored, version = existing
        if owner not in (None, row["id"]):
            found = self.conn.execute(
                select(messages.c.account_id, messages.c.provider_id).where(messages.c.id == owner)
            ).first()
            where = (
                f"message {found.provider_id} of account {found.account_id}"
                if found
                else "another mailbox"
            )
            return Decision(
                provider_id=decision.provider_id,
                reason=Reason.DUPLICATE_MESSAGE,
                person_ids=decision.person_ids,
                detail=f"the same email ({key}) was stored first as {where}, "
                f"whose decision writes its one activity",
            )
        if stored != desired:
            if key in self.inserts:  # created by this recording: still its first version
                self.inserts[key].update(owner_message_id=row["id"], desired=desired)
                self.existing[key] = (row["id"], desired, version)
                return decision
            self.updates[key] = {
                "b_key": key,
                "b_owner": row["id"],
                "b_desired": desired,
                "b_version": version + 1,
                "b_read_owner": self.read[key][0],
                "b_read_version": self.read[key][2],
                "b_updated_at": now,
            }
            self.existing[key] = (row["id"], desired, version + 1)
        return decision

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
        for start in range(0, len(wanted), 500):
            rows = self.conn.execute(
                select(
                    activities.c.key, activities.c.owner_message_id, activities.c.desired_version
                ).where(activities.c.key.in_(wanted[start : start + 500]))
            )
            # A message's id is its own: a row that names this recording's message at the
            # version it wrote is the one it wrote.
            kept.update(
                key
                for key, owner, version in rows
                if (owner, version) == (written[key], self.existing[key][2])
            )
        return set(wanted) - kept
