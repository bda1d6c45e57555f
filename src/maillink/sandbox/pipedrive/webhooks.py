"""The sandbox company's webhooks: `/v1/webhooks` (list, create, delete) and the v2 notifications
it sends when a deal, lead, person or project is created, changed or deleted.

The endpoints validate and answer as the v1 spec describes them (201 on create; a 400 names the
faulty fields in `errors`). The password is never shown back, as Pipedrive does. Notifications
follow Pipedrive's webhooks v2 format: `meta` (action create|change|delete, entity, entity_id,
version "2.0"…), `data` (the record now; null once deleted) and `previous` (the changed fields'
former values on a change, the whole record on a delete, null on a create). They are POSTed to
each matching active webhook from one background thread, with the webhook's basic auth, once
(best effort): the receiver's status, or 0 when it could not be reached, becomes the webhook's
`last_http_status`; a failing receiver never fails the sandbox's API.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Response, jsonify, request

from maillink.sandbox.pipedrive.data import (
    Deal,
    Lead,
    Person,
    Project,
    deal_json,
    lead_json,
    person_json,
    project_json,
    v2_time,
)

# Operation -> token cost (the v1 spec's x-token-cost); charged like `TOKEN_COSTS`.
WEBHOOK_COSTS: dict[str, int] = {"webhooks.list": 10, "webhooks.create": 10, "webhooks.delete": 6}
ACTIONS = ("create", "change", "delete", "*")
# The spec's event_object enum, and `project`, which webhooks v2 added (Pipedrive's guide).
SPEC_OBJECTS = (
    "activity",
    "deal",
    "lead",
    "note",
    "organization",
    "person",
    "pipeline",
    "product",
    "stage",
    "user",
    "*",
)
OBJECTS = frozenset(SPEC_OBJECTS) | {"project"}
VERSIONS = ("1.0", "2.0")
MAX_PER_USER = 40  # Pipedrive's limit of webhooks per user
NO_ANSWER = 0  # last_http_status of a delivery that got no HTTP answer
DELIVERY_TIMEOUT = 5.0

Record = Person | Deal | Lead | Project


def shown(record: Record) -> tuple[str, int | str, dict[str, Any]]:
    """(entity, entity id, data) of a record, as a v2 notification shows it."""
    if isinstance(record, Person):
        return "person", record.id, person_json(record)
    if isinstance(record, Deal):
        return "deal", record.id, deal_json(record)
    if isinstance(record, Lead):
        return "lead", record.id, lead_json(record)
    return "project", record.id, project_json(record)


def _gone(record: Record | None) -> bool:
    if record is None:
        return True
    if isinstance(record, Deal):
        return record.is_deleted
    return isinstance(record, Project) and record.status == "deleted"


@dataclass
class Webhook:
    id: int
    event_action: str
    event_object: str
    subscription_url: str
    name: str
    version: str
    http_auth_user: str | None
    http_auth_password: str | None = field(repr=False)
    user_id: int
    add_time: datetime
    is_active: int = 1
    last_delivery_time: datetime | None = None
    last_http_status: int | None = None

    def matches(self, action: str, entity: str) -> bool:
        return (
            bool(self.is_active)
            and self.version == "2.0"
            and self.event_action in ("*", action)
            and self.event_object in ("*", entity)
        )


def webhook_json(hook: Webhook) -> dict[str, Any]:
    """A webhook as GET/POST /v1/webhooks show it (never its password)."""
    return {
        "id": hook.id,
        "company_id": 1,
        "owner_id": hook.user_id,
        "user_id": hook.user_id,
        "event_action": hook.event_action,
        "event_object": hook.event_object,
        "subscription_url": hook.subscription_url,
        "version": hook.version,
        "is_active": hook.is_active,
        "add_time": v2_time(hook.add_time),
        "remove_time": None,
        "type": "general",
        "http_auth_user": hook.http_auth_user,
        "http_auth_password": None,
        "remove_reason": None,
        "last_delivery_time": v2_time(hook.last_delivery_time),
        "last_http_status": hook.last_http_status,
        "admin_id": 1,
        "name": hook.name,
    }


@dataclass(frozen=True)
class Delivery:
    """One notification the sandbox sent (or tried to), for tests to look at."""

    webhook_id: int
    url: str
    body: dict[str, Any]
    status: int


@dataclass(frozen=True)
class Snapshot:
    """A record as it was before a change (`before`), to compare with it afterwards."""

    entity: str
    entity_id: int | str
    data: dict[str, Any]


def _bad_request(errors: dict[str, list[str]], status: int = 400) -> Response:
    response = jsonify({"status": "error", "success": False, "errors": errors})
    response.status_code = status
    return response


class SandboxWebhooks:
    """The company's webhooks and their delivery. Thread-safe."""

    def __init__(self, clock: Callable[[], datetime] | None = None, *, host: str = "sandbox"):
        self.clock = clock or (lambda: datetime.now(UTC))
        self.host = f"{host}.pipedrive.com"
        self.objects: frozenset[str] = OBJECTS  # what POST accepts as event_object
        self.hooks: dict[int, Webhook] = {}
        self.delivered: deque[Delivery] = deque(maxlen=1000)
        self.session = requests.Session()
        self._lock = threading.Lock()
        self._next_id = 0
        self._queue: deque[tuple[int, str, dict[str, Any]]] = deque()
        self._pending = 0
        self._wakeup = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- the API -------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Callable[..., Response], str]]:
        return [
            ("/api/v1/webhooks", "webhooks.list", self.list_view, "GET"),
            ("/api/v1/webhooks", "webhooks.create", self.create_view, "POST"),
            ("/api/v1/webhooks/<int:webhook_id>", "webhooks.delete", self.delete_view, "DELETE"),
        ]

    def list_view(self) -> Response:
        with self._lock:
            data = [webhook_json(h) for h in self.hooks.values()]
        return jsonify({"status": "ok", "success": True, "data": data})

    def create_view(self) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _bad_request({"body": ["must be a JSON object"]})
        errors = self._check(body)
        if errors:
            return _bad_request(errors)
        with self._lock:
            user_id = body.get("user_id", 1)
            if sum(1 for h in self.hooks.values() if h.user_id == user_id) >= MAX_PER_USER:
                return _bad_request({"user_id": [f"at most {MAX_PER_USER} webhooks per user"]})
            self._next_id += 1
            hook = Webhook(
                id=self._next_id,
                event_action=body["event_action"],
                event_object=body["event_object"],
                subscription_url=body["subscription_url"],
                name=body["name"],
                version=body.get("version", "2.0"),
                http_auth_user=body.get("http_auth_user"),
                http_auth_password=body.get("http_auth_password"),
                user_id=user_id,
                add_time=self.clock(),
            )
            self.hooks[hook.id] = hook
            response = jsonify({"status": "ok", "success": True, "data": webhook_json(hook)})
        response.status_code = 201
        return response

    def delete_view(self, webhook_id: int) -> Response:
        with self._lock:
            if self.hooks.pop(webhook_id, None) is None:
                return _bad_request({"id": ["Webhook not found"]}, 404)
        return jsonify({"status": "ok", "success": True})

    def _check(self, body: dict[str, Any]) -> dict[str, list[str]]:
        """The addWebhookRequest rules of the spec, field by field."""
        errors: dict[str, list[str]] = {}
        for name in ("subscription_url", "event_action", "event_object", "name"):
            if not isinstance(body.get(name), str) or not body[name]:
                errors[name] = ["is required and must be a string"]
        url = body.get("subscription_url")
        if isinstance(url, str) and url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                errors["subscription_url"] = ["invalid or non-reachable URL"]
            elif parts.netloc == request.host:
                errors["subscription_url"] = ["Pipedrive API endpoints cannot be used"]
        if isinstance(body.get("event_action"), str) and body["event_action"] not in ACTIONS:
            errors["event_action"] = [f"must be one of {', '.join(ACTIONS)}"]
        if isinstance(body.get("event_object"), str) and body["event_object"] not in self.objects:
            errors["event_object"] = [f"must be one of {', '.join(sorted(self.objects))}"]
        if isinstance(body.get("name"), str) and len(body["name"]) > 255:
            errors["name"] = ["must be at most 255 characters"]
        if body.get("version", "2.0") not in VERSIONS:
            errors["version"] = ["must be 1.0 or 2.0"]
        for name in ("http_auth_user", "http_auth_password"):
            if body.get(name) is not None and not isinstance(body[name], str):
                errors[name] = ["must be a string or null"]
        user_id = body.get("user_id", 1)
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            errors["user_id"] = ["must be an integer"]
        return errors

    # -- changes -------------------------------------------------------------------------------

    def listening(self) -> bool:
        return bool(self.hooks)

    def before(self, record: Record) -> Snapshot | None:
        """The record before a change; None (nothing to compare) when no webhook is installed."""
        if not self.hooks:
            return None
        return Snapshot(*shown(record))

    def created(self, record: Record, *, source: str = "app") -> None:
        if self.hooks:
            entity, entity_id, data = shown(record)
            self._notify("create", entity, entity_id, data, None, source)

    def after(
        self,
        snapshot: Snapshot | None,
        record: Record | None,
        *,
        source: str = "app",
        merged_to_id: int | None = None,
    ) -> None:
        """Notify the change from `snapshot` to `record` (None or deleted: a delete)."""
        if snapshot is None:
            return
        entity, entity_id, previous = snapshot.entity, snapshot.entity_id, snapshot.data
        if _gone(record):
            meta = {"merged_to_id": str(merged_to_id)} if merged_to_id is not None else {}
            self._notify("delete", entity, entity_id, None, previous, source, meta)
            return
        assert record is not None
        data = shown(record)[2]
        changed = {k: v for k, v in previous.items() if data.get(k) != v}
        if changed:
            self._notify("change", entity, entity_id, data, changed, source)

    def _notify(
        self,
        action: str,
        entity: str,
        entity_id: int | str,
        data: dict[str, Any] | None,
        previous: dict[str, Any] | None,
        source: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        at = self.clock()
        with self._lock:
            targets = [h for h in self.hooks.values() if h.matches(action, entity)]
            for hook in targets:
                body = {
                    "meta": {
                        "action": action,
                        "entity": entity,
                        "entity_id": entity_id,
                        "id": str(uuid.uuid4()),
                        "version": "2.0",
                        "company_id": 1,
                        "user_id": 1,
                        "webhook_id": hook.id,
                        "webhook_owner_id": hook.user_id,
                        "permitted_user_ids": [1],
                        "attempt": 1,
                        "host": self.host,
                        "timestamp": int(at.timestamp()),
                        "change_source": source,
                        "is_bulk_edit": False,
                        "correlation_id": str(uuid.uuid4()),
                        **(extra or {}),
                    },
                    "data": data,
                    "previous": previous,
                }
                self._queue.append((hook.id, hook.subscription_url, body))
                self._pending += 1
            if targets:
                self._start()
                self._wakeup.notify_all()

    # -- delivery ------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(
                target=self._deliver_all, name="pipedrive-webhooks", daemon=True
            )
            self._thread.start()

    def _deliver_all(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if self._stopping and not self._queue:
                    return
                hook_id, url, body = self._queue.popleft()
                hook = self.hooks.get(hook_id)
                auth = (
                    (hook.http_auth_user or "", hook.http_auth_password or "")
                    if hook is not None and hook.http_auth_user is not None
                    else None
                )
            status = self._post(url, body, auth)
            with self._lock:
                if hook is not None:
                    hook.last_delivery_time = self.clock()
                    hook.last_http_status = status
                self.delivered.append(Delivery(hook_id, url, body, status))
                self._pending -= 1
                self._wakeup.notify_all()

    def _post(self, url: str, body: dict[str, Any], auth: tuple[str, str] | None) -> int:
        try:
            response = self.session.post(
                url,
                json=body,
                auth=auth,
                timeout=DELIVERY_TIMEOUT,
                allow_redirects=False,
                headers={"User-Agent": "Pipedrive Webhooks"},
            )
        except requests.RequestException:
            return NO_ANSWER
        with contextlib.closing(response):
            return response.status_code

    def wait_delivered(self, timeout: float = 10.0) -> bool:
        """Wait until every notification queued so far was sent; False after `timeout` s."""
        with self._lock:
            return self._wakeup.wait_for(lambda: self._pending == 0, timeout)

    def clear(self) -> None:
        with self._lock:
            self.hooks.clear()
            self._queue.clear()
            self._pending = 0
            self.delivered.clear()
            self.objects = OBJECTS
            self._wakeup.notify_all()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=DELIVERY_TIMEOUT + 1)
        self.session.close()
