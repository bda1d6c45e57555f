"""Graph change notifications in the Microsoft sandbox: `/subscriptions` and the notifications.

    POST   /v1.0/subscriptions        create: the notification URL (and the lifecycle URL, when it
                                      differs) is validated first: POST ?validationToken=… must
                                      answer 200 with the token as text/plain within 10 s
    GET    /v1.0/subscriptions        the app's live subscriptions
    GET    /v1.0/subscriptions/{id}   one
    PATCH  /v1.0/subscriptions/{id}   renew: a new expirationDateTime
    DELETE /v1.0/subscriptions/{id}   204

A user's token (delegated Mail.ReadBasic or Mail.Read) subscribes to its own mailbox only; an app
token (client credentials) to any member's mailbox at `/users/{id}/…` when the app holds the
application permission Mail.ReadBasic.All (or Mail.Read) and no application access policy keeps
it out, as Graph allows. Each token manages (lists, renews, deletes) the subscriptions made with
its kind: the app's, or the user's own.

A message subscription lasts at most 10,080 minutes (`MAX_MINUTES`); a later expiration is
refused, an expired subscription is gone. A message created in (or moved into) a subscribed folder
sends a "created" notification, a changed one an "updated" notification, from a background thread
as Graph does: `{"value": [{subscriptionId, clientState, changeType, resource, resourceData,
subscriptionExpirationDateTime, tenantId}]}`. `lifecycle(id, event)` sends a lifecycle
notification on demand (reauthorizationRequired, subscriptionRemoved — which also removes the
subscription — or missed). `wait()` returns once every notification queued so far was answered.
"""

from __future__ import annotations

import queue
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import requests
from flask import Flask, Response, request

from maillink.sandbox.microsoft.directory import check_app_mail
from maillink.sandbox.microsoft.graph import _USER, GraphContext, _authenticate
from maillink.sandbox.microsoft.mailbox import iso, parse_iso
from maillink.sandbox.microsoft.odata import ODataError

MAX_MINUTES = 10_080  # Outlook messages: the longest a subscription may last
VALIDATION_TIMEOUT = 10.0  # seconds Graph waits for the validation answer
CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved", "missed"})
MAX_CLIENT_STATE = 128
_MESSAGES = re.compile(r"^(?:mailFolders(?:/([^/]+)|\('([^']+)'\))/)?messages$", re.IGNORECASE)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Subscription:
    id: str
    mailbox: str  # the mailbox's key
    user_id: str
    folder: str | None  # None: every folder's messages
    resource: str
    change_types: frozenset[str]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires: datetime
    application_id: str
    by_app: bool = False  # made with an app token (application permissions), not a user's

    def body(self) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": ",".join(sorted(self.change_types)),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": iso(self.expires),
            "creatorId": self.application_id if self.by_app else self.user_id,
            "latestSupportedTlsVersion": "v1_2",
            "notificationContentType": None,
            "includeResourceData": None,
        }


@dataclass(frozen=True)
class Delivery:
    """One notification POST: where, for which subscription, what, and the answer (0: none)."""

    url: str
    subscription_id: str
    kind: str  # created | updated | a lifecycle event
    status: int


class GraphSubscriptions:
    """The subscriptions of the sandbox's Graph, and the notifications they send."""

    def __init__(self, tenant_id: str, application_id: str) -> None:
        self.tenant_id = tenant_id
        self.application_id = application_id
        self.clock: Callable[[], datetime] = _now
        self.deliveries: list[Delivery] = []
        self.validations: list[tuple[str, int]] = []  # (url, status) of each handshake
        self._subscriptions: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, str, str, dict[str, Any]]] = queue.Queue()
        self._session = requests.Session()
        self._worker: threading.Thread | None = None

    # -- the state ------------------------------------------------------------------------------
    def live(self, subscription_id: str) -> Subscription | None:
        """The subscription, if it exists and has not expired."""
        with self._lock:
            found = self._subscriptions.get(subscription_id)
            if found is not None and found.expires <= self.clock():
                del self._subscriptions[subscription_id]
                return None
            return found

    def all_live(self) -> list[Subscription]:
        with self._lock:
            ids = list(self._subscriptions)
        return [s for s in (self.live(i) for i in ids) if s is not None]

    def of_mailbox(self, email: str) -> list[Subscription]:
        key = email.strip().lower()
        return [s for s in self.all_live() if s.mailbox == key]

    def expiry_error(self, expires: datetime) -> ODataError | None:
        now = self.clock()
        if expires <= now:
            return ODataError(400, "InvalidRequest", "Subscription expiration is in the past.")
        if expires > now + timedelta(minutes=MAX_MINUTES):
            return ODataError(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {MAX_MINUTES} minutes in the future.",
            )
        return None

    def add(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions[subscription.id] = subscription

    def remove(self, subscription_id: str) -> bool:
        with self._lock:
            return self._subscriptions.pop(subscription_id, None) is not None

    # -- the validation handshake ---------------------------------------------------------------
    def validate(self, url: str) -> bool:
        """POST ?validationToken=… to `url`: True when it echoes the token as text/plain."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        try:
            answer = self._session.post(
                url,
                params={"validationToken": token},
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=VALIDATION_TIMEOUT,
            )
            status = answer.status_code
            echoed = (
                status == 200
                and answer.text == token
                and answer.headers.get("Content-Type", "").startswith("text/plain")
            )
        except requests.RequestException:
            status, echoed = 0, False
        with self._lock:
            self.validations.append((url, status))
        return echoed

    # -- notifications --------------------------------------------------------------------------
    def changed(self, mailbox: str, folder: str, change_type: str, message_id: str) -> None:
        """A message of `mailbox` was created or updated in `folder`: notify who subscribed."""
        for subscription in self.all_live():
            if (
                subscription.mailbox != mailbox
                or change_type not in subscription.change_types
                or subscription.folder not in (None, folder)
            ):
                continue
            resource = f"Users/{subscription.user_id}/Messages/{message_id}"
            item = self._item(subscription) | {
                "changeType": change_type,
                "resource": resource,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Message",
                    "@odata.id": resource,
                    "id": message_id,
                },
            }
            self._send(subscription.notification_url, subscription.id, change_type, item)

    def lifecycle(self, subscription_id: str, event: str) -> None:
        """Send a lifecycle notification (subscriptionRemoved also removes the subscription)."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"not a lifecycle event: {event!r}")
        subscription = self.live(subscription_id)
        if subscription is None:
            raise KeyError(f"no subscription {subscription_id}")
        if subscription.lifecycle_url is None:
            raise ValueError("the subscription has no lifecycleNotificationUrl")
        if event == "subscriptionRemoved":
            self.remove(subscription_id)
        item = self._item(subscription) | {"lifecycleEvent": event}
        self._send(subscription.lifecycle_url, subscription.id, event, item)

    def _item(self, subscription: Subscription) -> dict[str, Any]:
        return {
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": iso(subscription.expires),
            "clientState": subscription.client_state,
            "tenantId": self.tenant_id,
        }

    def _send(self, url: str, subscription_id: str, kind: str, item: dict[str, Any]) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._deliver, name="sandbox-graph-notify", daemon=True
                )
                self._worker.start()
        self._queue.put((url, subscription_id, kind, {"value": [item]}))

    def _deliver(self) -> None:
        while True:
            url, subscription_id, kind, body = self._queue.get()
            try:
                status = self._session.post(url, json=body, timeout=VALIDATION_TIMEOUT).status_code
            except requests.RequestException:
                status = 0
            finally:
                self._queue.task_done()
            with self._lock:
                self.deliveries.append(Delivery(url, subscription_id, kind, status))

    def wait(self) -> None:
        """Return once every notification queued so far has been sent (and answered)."""
        self._queue.join()


# -- the routes -------------------------------------------------------------------------------
def _target(ctx: GraphContext, grant: Any, resource: str) -> tuple[str, str, str | None]:
    """(mailbox key, user id, folder name or None) of a subscription's resource."""
    match = _USER.match(resource.strip().lstrip("/"))
    tail = _MESSAGES.match((match.group(3) or "") if match else "")
    if match is None or tail is None:
        raise ODataError(
            400, "InvalidRequest", f"Resource '{resource}' is not supported for subscriptions."
        )
    if not grant.app and not {"Mail.ReadBasic", "Mail.Read"}.intersection(grant.scopes):
        raise ODataError(403, "ExtensionError", "Operation: Create; Exception: [Access denied]")
    mailbox = ctx.mailbox_for(grant, match.group(1) or match.group(2))
    if grant.app:  # application permissions: any member's mailbox, with Mail.ReadBasic.All
        try:
            check_app_mail(ctx, grant, mailbox)
        except ODataError as error:
            raise ODataError(
                403, "ExtensionError", f"Operation: Create; Exception: [{error.message}]"
            ) from None
    folder = None
    ref = tail.group(1) or tail.group(2)
    if ref is not None:
        with ctx.lock:
            folder = mailbox.folder_name(unquote(ref))
        if folder is None:
            raise ODataError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
    return mailbox.key, mailbox.user_id, folder


def _expiration(subs: GraphSubscriptions, body: dict[str, Any]) -> datetime:
    try:
        expires = parse_iso(str(body["expirationDateTime"]))
    except (KeyError, ValueError):
        raise ODataError(
            400, "InvalidRequest", "expirationDateTime is missing or invalid."
        ) from None
    error = subs.expiry_error(expires)
    if error is not None:
        raise error
    return expires


def _new_subscription(
    ctx: GraphContext, subs: GraphSubscriptions, grant: Any, body: dict[str, Any]
) -> Subscription:
    changes = frozenset(c.strip() for c in str(body.get("changeType") or "").split(",") if c)
    url, lifecycle = body.get("notificationUrl"), body.get("lifecycleNotificationUrl")
    state = body.get("clientState")
    if not changes or not changes <= CHANGE_TYPES:
        raise ODataError(400, "InvalidRequest", "changeType must be created, updated, deleted.")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ODataError(400, "InvalidRequest", "notificationUrl must be an https URL.")
    if lifecycle is not None and not isinstance(lifecycle, str):
        raise ODataError(400, "InvalidRequest", "lifecycleNotificationUrl must be a URL.")
    if state is not None and (not isinstance(state, str) or len(state) > MAX_CLIENT_STATE):
        raise ODataError(400, "InvalidRequest", "clientState is longer than 128 characters.")
    resource = str(body.get("resource") or "")
    mailbox, user_id, folder = _target(ctx, grant, resource)
    expires = _expiration(subs, body)
    for endpoint in dict.fromkeys(u for u in (url, lifecycle) if u):
        if not subs.validate(endpoint):
            raise ODataError(
                400,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond "
                "with 200 OK to validation request.",
            )
    return Subscription(
        str(uuid.uuid4()),
        mailbox,
        user_id,
        folder,
        resource,
        changes,
        url,
        lifecycle,
        state,
        expires,
        subs.application_id,
        by_app=grant.app,
    )


def _mine(subscription: Subscription, grant: Any) -> bool:
    """An app token manages the subscriptions the app made with its own token; a user's token,
    those made with a token of that user's."""
    if grant.app:
        return subscription.by_app
    return not subscription.by_app and subscription.mailbox == grant.email


def register_subscription_routes(app: Flask, ctx: GraphContext, subs: GraphSubscriptions) -> None:
    def own(subscription_id: str, grant: Any) -> Subscription:
        found = subs.live(subscription_id)
        if found is None or not _mine(found, grant):
            raise ODataError(
                404, "ResourceNotFound", f"The object was not found: {subscription_id}"
            )
        return found

    @app.post("/v1.0/subscriptions")
    def create_subscription() -> Any:
        ctx.meter.count("graph.subscriptions.create")
        grant = _authenticate(ctx)
        if isinstance(grant, Response):
            return grant
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ODataError(400, "InvalidRequest", "The body must be a subscription.")
        made = _new_subscription(ctx, subs, grant, body)
        subs.add(made)
        return made.body(), 201

    @app.get("/v1.0/subscriptions")
    def list_subscriptions() -> Any:
        grant = _authenticate(ctx)
        if isinstance(grant, Response):
            return grant
        mine = [s.body() for s in subs.all_live() if _mine(s, grant)]
        return {"value": mine}

    @app.route("/v1.0/subscriptions/<subscription_id>", methods=["GET", "PATCH", "DELETE"])
    def one_subscription(subscription_id: str) -> Any:
        ctx.meter.count(f"graph.subscriptions.{request.method.lower()}")
        grant = _authenticate(ctx)
        if isinstance(grant, Response):
            return grant
        found = own(subscription_id, grant)
        if request.method == "DELETE":
            subs.remove(found.id)
            return Response(status=204)
        if request.method == "PATCH":
            body = request.get_json(silent=True)
            found.expires = _expiration(subs, body if isinstance(body, dict) else {})
        return found.body()
