"""What `/push/graph` does with a batch of Graph change (or lifecycle) notifications.

Each item's `clientState` is compared (constant time) with the stored one of its
`subscriptionId`; unknown or forged items are ignored, and the mailbox is only woken (the delta
cursor stays the truth). Lifecycle notifications: `reauthorizationRequired` makes the
subscription due now, `subscriptionRemoved` makes it again, `missed` wakes the mailbox for a
normal delta round; the first two poke the keeper (`GraphSubscriptions.poke`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from maillink.errors import WrongKeyError
from maillink.ops.webhooks import BadPayload
from maillink.push.keeper import now_utc
from maillink.secrets import TokenCipher
from maillink.store import Store, accounts, push
from maillink.store.push import Subscription

log = logging.getLogger("maillink.push")

MAX_ITEMS = 1000  # notifications in one batch; Graph sends far fewer
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


@dataclass(frozen=True)
class Notification:
    subscription_id: str
    client_state: str | None
    change_type: str | None
    lifecycle_event: str | None


def parse_notifications(payload: Any) -> list[Notification]:
    """The items of a change (or lifecycle) notification batch; `BadPayload` if it is not one."""
    if not isinstance(payload, dict) or not isinstance(payload.get("value"), list):
        raise BadPayload('the body must be a Graph notification batch {"value": [...]}')
    items = payload["value"]
    if len(items) > MAX_ITEMS:
        raise BadPayload(f"more than {MAX_ITEMS} notifications in one batch")
    found = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("subscriptionId"), str):
            raise BadPayload("each notification must be an object with a subscriptionId")
        state = item.get("clientState")
        change, event = item.get("changeType"), item.get("lifecycleEvent")
        found.append(
            Notification(
                subscription_id=item["subscriptionId"][:200],
                client_state=state if isinstance(state, str) else None,
                change_type=change if isinstance(change, str) else None,
                lifecycle_event=event if isinstance(event, str) else None,
            )
        )
    return found


@dataclass
class Handled:
    """What a batch did: mailboxes woken, subscriptions renewed or made again, items ignored."""

    woken: set[int] = field(default_factory=set)
    renewed: int = 0
    recreated: int = 0
    ignored: int = 0


class GraphNotifications:
    """Checks and acts on the notification batches `/push/graph` receives."""

    def __init__(
        self,
        store: Store,
        cipher: TokenCipher,
        *,
        wake: Callable[[int], None],
        renew: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.wake = wake
        self.renew = renew  # asks the keeper to check now (GraphSubscriptions.poke)
        self.clock = clock

    def _genuine(self, item: Notification, known: dict[str, Subscription]) -> Subscription | None:
        subscription = known.get(item.subscription_id)
        if subscription is None or subscription.secret is None or item.client_state is None:
            log.info("graph notification for an unknown subscription: ignored")
            return None
        try:
            expected = self.cipher.decrypt(subscription.secret)
        except WrongKeyError:
            log.warning("graph notification: the stored clientState does not decrypt: ignored")
            return None
        if not hmac.compare_digest(item.client_state.encode(), expected.encode()):
            log.warning(
                "graph notification with a wrong clientState: ignored",
                extra={"event": "push_refused", "account_id": subscription.account_id},
            )
            return None
        return subscription

    def handle(self, items: list[Notification]) -> Handled:
        done = Handled()
        with self.store.engine.connect() as conn:
            known = push.by_external_ids(conn, (i.subscription_id for i in items))
            ids = {s.account_id for s in known.values()}
            active = {
                a.id
                for a in (accounts.get_by_id(conn, i) for i in sorted(ids))
                if a is not None and a.provider == "microsoft" and a.status == accounts.ACTIVE
            }
        poke = False
        for item in items:
            subscription = self._genuine(item, known)
            if subscription is None or subscription.account_id not in active:
                done.ignored += 1
                continue
            event = item.lifecycle_event
            if event == "reauthorizationRequired":
                with self.store.transaction() as conn:
                    push.renew_now(conn, subscription.id, self.clock())
                done.renewed += 1
                poke = True
            elif event == "subscriptionRemoved":
                with self.store.transaction() as conn:
                    push.forget(conn, subscription.id, self.clock())
                done.recreated += 1
                poke = True
            elif event == "missed" or (event is None and item.change_type is not None):
                done.woken.add(subscription.account_id)
            else:
                done.ignored += 1
        for account_id in sorted(done.woken):
            self.wake(account_id)
        if poke:
            self.renew()
        return done
