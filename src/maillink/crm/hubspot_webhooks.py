"""HubSpot's webhooks at the daemon (`POST /webhooks/hubspot`): proven by their v3 signature,
turned into `CrmChange`s, which the endpoint forgets as it forgets Pipedrive's
(`maillink.ops.webhooks.forget`).

A public app's webhooks are signed with its client secret: `X-HubSpot-Signature-v3` is the
base64 HMAC-SHA256 of method + URI + body + `X-HubSpot-Request-Timestamp` (milliseconds). A
request whose timestamp is more than five minutes away, or whose signature matches neither the
URL it reached nor the one under `[daemon] public_url` (behind a proxy HubSpot signs the public
one), is refused.

Events name objects by id only. A deal's or lead's change makes its contacts' items stale: they
are read through the v4 associations, one request per batch of events; when that read fails,
or the deal is deleted (its associations are gone with it), every person's items are
forgotten, as Pipedrive's deletes without `previous` are. A contact's email change forgets every
cached address, since the event does not say which address it replaced, and so does a merge
of contacts (the merged-away addresses now find the contact kept); a deleted contact leaves the
caches. A new contact reaches them through its `email` change event, or the poll.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from maillink.crm.base import CrmChange, CRMError
from maillink.crm.hubspot import HubSpotCRM
from maillink.crm.hubspot_reads import associated

log = logging.getLogger(__name__)

ENDPOINT_PATH = "/webhooks/hubspot"  # the daemon's route (maillink.ops.server)
SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
SIGNED_HEADERS = (SIGNATURE_HEADER, TIMESTAMP_HEADER)  # what `verify_v3` reads
MAX_AGE_SECONDS = 300.0  # HubSpot: reject requests whose timestamp is older than 5 minutes
# The item properties whose change moves a deal in or out of the candidates (rules 2 and 6).
ITEM_PROPERTIES = frozenset(
    {"dealstage", "hs_is_closed", "hs_is_closed_won", "closedate", "hs_pipeline_stage"}
)
ITEM_OBJECTS = {"deal": "deals", "lead": "leads"}
# HubSpot decodes these escapes in the URI before signing it (its v3 signature guide).
_URI_ESCAPES = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}

PersonsOf = Callable[[str, list[int]], set[int]]  # ("deals", ids) -> the contacts of those


class SignatureRefused(Exception):
    """The request is not proven to be HubSpot's; the message says why (for the log)."""


class BadEvents(ValueError):
    """The body is not a HubSpot webhook request; the message says what is wrong."""


def _signing_uri(uri: str) -> str:
    for escaped, char in _URI_ESCAPES.items():
        uri = uri.replace(escaped, char).replace(escaped.lower(), char)
    return uri


def signature_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + _signing_uri(uri).encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_v3(
    secret: str,
    method: str,
    uris: Iterable[str],
    body: bytes,
    headers: Mapping[str, str],
    now: datetime,
    max_age: float = MAX_AGE_SECONDS,
) -> None:
    """`SignatureRefused` unless the headers sign this request for one of `uris` within
    `max_age` seconds of `now`."""
    signature = (headers.get(SIGNATURE_HEADER) or "").strip()
    stamp = (headers.get(TIMESTAMP_HEADER) or "").strip()
    if not signature or not stamp:
        raise SignatureRefused(f"{SIGNATURE_HEADER} or {TIMESTAMP_HEADER} is missing")
    if not stamp.isdigit():
        raise SignatureRefused(f"{TIMESTAMP_HEADER} is not a number of milliseconds")
    age = now.timestamp() - int(stamp) / 1000
    if abs(age) > max_age:
        raise SignatureRefused(f"the timestamp is {age:.0f} s away (more than {max_age:g} s)")
    for uri in uris:
        expected = signature_v3(secret, method, uri, body, stamp)
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return
    raise SignatureRefused("the signature does not match")


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class Event:
    """One event of a HubSpot webhook request, the fields maillink reads."""

    object_type: str  # "deal", "contact"…
    change: str  # "creation", "deletion", "propertyChange"…
    object_id: int
    property_name: str | None = None
    property_value: str | None = None
    merged_ids: tuple[int, ...] = ()  # a merge event's merged-away ids


def parse_events(payload: Any) -> list[Event]:
    """The events of a request body (a JSON array of at most 100 events); `BadEvents` if not."""
    if not isinstance(payload, list):
        raise BadEvents("the body must be a JSON array of HubSpot webhook events")
    events = []
    for raw in payload:
        if not isinstance(raw, dict):
            raise BadEvents("every event must be a JSON object")
        kind = raw.get("subscriptionType")
        object_id = _int(raw.get("objectId"))
        if not isinstance(kind, str) or "." not in kind or object_id is None:
            raise BadEvents("an event needs a subscriptionType and a numeric objectId")
        object_type, _, change = kind.partition(".")
        name, value = raw.get("propertyName"), raw.get("propertyValue")
        merged = raw.get("mergedObjectIds")
        merged_ids = [_int(i) for i in merged] if isinstance(merged, list) else []
        events.append(
            Event(
                object_type,
                change,
                object_id,
                name if isinstance(name, str) else None,
                value if isinstance(value, str) else None,
                tuple(i for i in merged_ids if i is not None),
            )
        )
    return events


def _moves_items(event: Event) -> bool:
    if event.object_type not in ITEM_OBJECTS:
        return False
    if event.change == "propertyChange":
        return event.property_name in ITEM_PROPERTIES
    return event.change in ("creation", "deletion", "restore", "merge", "associationChange")


@dataclass
class HubSpotWebhooks:
    """What the daemon's endpoint needs to accept HubSpot's webhooks: the app's client secret,
    the URL HubSpot posts to when the daemon is behind a proxy, and how to read a deal's
    contacts (None: every person's items are forgotten on a deal change)."""

    client_secret: str = field(repr=False)
    public_url: str | None = None
    persons_of: PersonsOf | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def verify(
        self, method: str, url: str, path_and_query: str, body: bytes, headers: Mapping[str, str]
    ) -> None:
        uris = [url]
        if self.public_url:
            uris.append(self.public_url.rstrip("/") + path_and_query)
        verify_v3(self.client_secret, method, uris, body, headers, self.now())

    def changes(self, events: list[Event]) -> list[CrmChange]:
        """The cache changes a request's events make (empty when none concerns linking)."""
        found: list[CrmChange] = []
        moved: dict[str, set[int]] = {}
        for event in events:
            if _moves_items(event):
                if event.change == "deletion":
                    found.append(self._everyone(event))
                else:
                    moved.setdefault(ITEM_OBJECTS[event.object_type], set()).add(event.object_id)
            elif event.object_type == "contact":
                found += self._contact(event)
        for type_name, ids in sorted(moved.items()):
            found.append(self._items_moved(type_name, sorted(ids)))
        return found

    @staticmethod
    def _everyone(event: Event) -> CrmChange:
        return CrmChange(
            event.object_type,
            event.change,
            str(event.object_id),
            frozenset(),
            frozenset(),
            everyone=True,
        )

    def _items_moved(self, type_name: str, ids: list[int]) -> CrmChange:
        entity = type_name.rstrip("s")
        which = ",".join(map(str, ids))
        if self.persons_of is None:
            return CrmChange(entity, "changed", which, frozenset(), frozenset(), everyone=True)
        try:
            persons = self.persons_of(type_name, ids)
        except CRMError as exc:
            log.warning("hubspot webhook: the %s' contacts are unreadable: %s", type_name, exc)
            return CrmChange(entity, "changed", which, frozenset(), frozenset(), everyone=True)
        # A deal with no contact yet concerns no cached person: nothing to forget.
        return CrmChange(entity, "changed", which, frozenset(persons), frozenset())

    @staticmethod
    def _contact(event: Event) -> list[CrmChange]:
        contact = frozenset({event.object_id})
        who = str(event.object_id)
        if event.change == "deletion":
            return [CrmChange("person", "delete", who, contact, frozenset())]
        if event.change == "merge":
            # The merged-away contacts' addresses now find the one kept; the event names ids
            # only, so every cached address is forgotten, with both contacts' items.
            merged = frozenset({event.object_id, *event.merged_ids})
            return [CrmChange("person", "merge", who, merged, frozenset(), everyone=True)]
        if event.change == "propertyChange" and event.property_name in (
            "email",
            "hs_additional_emails",
        ):
            # The replaced address is not in the event: every cached address is forgotten.
            return [CrmChange("person", "change", who, contact, frozenset(), everyone=True)]
        return []


def persons_of(crm: HubSpotCRM) -> PersonsOf:
    """The contacts of deals or leads, through the adapter's v4 associations batch read."""

    def read(type_name: str, ids: list[int]) -> set[int]:
        return set(associated(crm.http, type_name, "contacts", ids))

    return read
