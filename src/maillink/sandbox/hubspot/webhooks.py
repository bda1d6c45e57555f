"""The public app's webhook subscriptions and the events HubSpot POSTs for them.

Subscriptions are set in the app's settings (here `subscribe`): `deal.creation`,
`deal.deletion`, `deal.propertyChange` (with a property name, `dealstage` say),
`contact.creation`, `contact.propertyChange` (`email`), `contact.merge`, `lead.*` likewise. Events are queued as
objects change, through the API or as a user acts, and are sent when a test calls `deliver`:
JSON arrays of at most 100 events, signed as HubSpot signs them (v3: `X-HubSpot-Signature-v3`
is the base64 HMAC-SHA256, keyed by the app's client secret, of method + URL + body +
`X-HubSpot-Request-Timestamp`). A receiver that does not answer 2xx gets the batch again at the
next `deliver`, with `attemptNumber` raised, as HubSpot retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from maillink.sandbox.hubspot.oauth import HUB_ID

MAX_EVENTS_PER_REQUEST = 100
APP_ID = 1_234_567
_SINGULAR = {"contacts": "contact", "companies": "company", "deals": "deal", "leads": "lead"}


def signature_v3(secret: str, method: str, url: str, body: bytes, timestamp: str) -> str:
    """HubSpot's v3 request signature."""
    message = method.encode() + url.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Subscription:
    id: int
    event_type: str  # "deal.propertyChange"…
    property_name: str | None = None


@dataclass
class Webhooks:
    """Subscriptions, the queue of events not yet accepted, and what was sent."""

    client_secret: str
    clock: Callable[[], datetime]
    target_url: str | None = None
    subscriptions: list[Subscription] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    sent: list[list[dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def subscribe(self, target_url: str, event_type: str, property_name: str | None = None) -> int:
        with self.lock:
            self.target_url = target_url
            subscription = Subscription(next(self._ids), event_type, property_name)
            self.subscriptions.append(subscription)
            return subscription.id

    def clear(self) -> None:
        with self.lock:
            self.target_url = None
            self.subscriptions.clear()
            self.pending.clear()
            self.sent.clear()

    def record(
        self, type_name: str, object_id: int, change: str, properties: dict[str, str]
    ) -> None:
        """Queue the events of one change: `change` is creation, deletion, propertyChange or
        merge (`properties` then holds `mergedObjectIds`)."""
        singular = _SINGULAR.get(type_name)
        if change == "forgotten":  # a refused batch undid the creation: no event for it
            with self.lock:
                self.pending = [e for e in self.pending if e["objectId"] != object_id]
            return
        if singular is None:
            return
        occurred = int(self.clock().timestamp() * 1000)
        with self.lock:
            for subscription in self.subscriptions:
                if subscription.event_type != f"{singular}.{change}":
                    continue
                event = {
                    "eventId": next(self._ids),
                    "subscriptionId": subscription.id,
                    "portalId": HUB_ID,
                    "appId": APP_ID,
                    "occurredAt": occurred,
                    "subscriptionType": subscription.event_type,
                    "attemptNumber": 0,
                    "objectId": object_id,
                    "changeSource": "CRM",
                }
                if change == "merge":  # the merged-away ids, as HubSpot's merge events say
                    merged = [int(i) for i in properties["mergedObjectIds"].split(";")]
                    event.update(
                        primaryObjectId=object_id, mergedObjectIds=merged, newObjectId=object_id
                    )
                if change == "propertyChange":
                    name = subscription.property_name
                    if name not in properties:
                        continue
                    event.update(propertyName=name, propertyValue=properties[name])
                self.pending.append(event)

    def deliver(self, session: requests.Session | None = None) -> list[int]:
        """POST the queued events to the target URL; the statuses answered (0: unreachable).
        Events of a batch that was not accepted stay queued for the next delivery."""
        with self.lock:
            batch, self.pending = self.pending, []
            url = self.target_url
        if not batch or url is None:
            return []
        http = session or requests.Session()
        statuses, failed = [], []
        for start in range(0, len(batch), MAX_EVENTS_PER_REQUEST):
            events = batch[start : start + MAX_EVENTS_PER_REQUEST]
            status = self._post(http, url, events)
            statuses.append(status)
            if 200 <= status < 300:
                self.sent.append(events)
            else:
                failed += [{**e, "attemptNumber": e["attemptNumber"] + 1} for e in events]
        with self.lock:
            self.pending[:0] = failed
        return statuses

    def _post(self, http: requests.Session, url: str, events: list[dict[str, Any]]) -> int:
        body = json.dumps(events).encode()
        timestamp = str(int(self.clock().timestamp() * 1000))
        headers = {
            "Content-Type": "application/json",
            "X-HubSpot-Request-Timestamp": timestamp,
            "X-HubSpot-Signature-v3": signature_v3(
                self.client_secret, "POST", url, body, timestamp
            ),
        }
        try:
            return http.post(url, data=body, headers=headers, timeout=10).status_code
        except requests.RequestException:
            return 0
