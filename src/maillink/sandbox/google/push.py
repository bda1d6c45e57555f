"""Gmail push in the sandbox: `users.watch` / `users.stop`, and Pub/Sub's signed push requests.

A topic has (at most) one push subscription here, set with `subscribe(topic, endpoint)`: which
URL its messages are POSTed to, as a Pub/Sub push subscription with OIDC authentication. A watch
lasts 7 days. When a watched mailbox changes on a label the watch filters on, the sandbox POSTs
the Pub/Sub push envelope (`message.data` = base64 JSON {emailAddress, historyId}) to the
endpoint, with an `Authorization: Bearer` OIDC token: an RS256 JWT issued by
https://accounts.google.com for the subscription's service account, signed by a key the sandbox
generated, whose certificate it serves at `/oauth2/v1/certs` ({key id: PEM x509}, Google's v1
format that google-auth's `id_token.verify_token` reads). Deliveries run on a thread, as
Pub/Sub's do; `wait()` returns once every push so far has been answered.
"""

from __future__ import annotations

import base64
import itertools
import json
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Flask, Response, request
from google.auth import crypt, jwt

from maillink.sandbox.google.errors import GoogleApiError, bad_request, json_response
from maillink.sandbox.google.gmail import GmailContext, _authorize

WATCH_DAYS = 7  # Gmail: a watch expires after 7 days unless renewed
TOKEN_SECONDS = 3600
ISSUER = "https://accounts.google.com"
SERVICE_ACCOUNT = "gmail-push@sandbox-project.iam.gserviceaccount.com"
CERTS_PATH = "/oauth2/v1/certs"
ATTEMPTS = 3  # a push answered 429/5xx (or unreachable) is sent again, with the same messageId
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")


@dataclass
class PushSubscription:
    """A Pub/Sub push subscription: where the topic's messages go, and who signs them."""

    topic: str
    endpoint: str
    audience: str | None = None  # None: the endpoint URL, as Pub/Sub does
    service_account: str = SERVICE_ACCOUNT
    authenticated: bool = True  # False: no Authorization header (an unauthenticated push)


@dataclass
class Watch:
    topic: str
    label_ids: tuple[str, ...]
    behavior: str  # include | exclude
    expiration_ms: int

    def wants(self, label_ids: Iterable[str]) -> bool:
        if not self.label_ids:
            return True
        touched = bool(set(label_ids) & set(self.label_ids))
        return touched if self.behavior == "include" else not touched


@dataclass(frozen=True)
class Delivery:
    """One push request sent: to whom, about what, and the answer (0: unreachable)."""

    endpoint: str
    email: str
    history_id: int
    message_id: str
    status: int


@dataclass
class SigningKey:
    """An RSA key and its self-signed certificate, as Google publishes its OIDC signing keys."""

    key_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.signer = crypt.RSASigner.from_string(pem, self.key_id)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandbox.googleapis.com")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()

    def token(self, claims: dict[str, Any]) -> str:
        """`claims` as an RS256 JWT signed with this key (its id in the header's `kid`)."""
        return jwt.encode(self.signer, claims).decode("ascii")


class PubSubPush:
    """Watches per mailbox, push subscriptions per topic, and the signed deliveries."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._key: SigningKey | None = (
            None  # made at first use: a sandbox without push pays nothing
        )
        self.deliveries: list[Delivery] = []
        self._subscriptions: dict[str, PushSubscription] = {}
        self._watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._queue: queue.Queue[tuple[PushSubscription, str, int, str]] = queue.Queue()
        self._session = requests.Session()
        self._worker: threading.Thread | None = None

    @property
    def key(self) -> SigningKey:
        with self._lock:
            if self._key is None:
                self._key = SigningKey()
            return self._key

    # -- configuration (what the admin sets up in Google Cloud) --------------------------------
    def subscribe(
        self,
        topic: str,
        endpoint: str,
        *,
        audience: str | None = None,
        service_account: str = SERVICE_ACCOUNT,
        authenticated: bool = True,
    ) -> PushSubscription:
        """Create the topic (if needed) and its push subscription to `endpoint`."""
        if not _TOPIC.match(topic):
            raise ValueError(f"not a topic name: {topic!r} (projects/P/topics/T)")
        subscription = PushSubscription(topic, endpoint, audience, service_account, authenticated)
        with self._lock:
            self._subscriptions[topic] = subscription
        return subscription

    def create_topic(self, topic: str) -> None:
        """A topic without a push subscription: watches on it succeed, nothing is pushed."""
        if not _TOPIC.match(topic):
            raise ValueError(f"not a topic name: {topic!r} (projects/P/topics/T)")
        with self._lock:
            self._subscriptions.setdefault(topic, PushSubscription(topic, ""))

    def certificates(self) -> dict[str, str]:
        return {self.key.key_id: self.key.certificate_pem}

    def token(
        self,
        audience: str,
        *,
        email: str = SERVICE_ACCOUNT,
        key: SigningKey | None = None,
        lifetime: int = TOKEN_SECONDS,
        **claims: Any,
    ) -> str:
        """An OIDC token as Pub/Sub sends it (tests use it to forge: another `key`, claims)."""
        now = int(self.clock())
        body: dict[str, Any] = {
            "aud": audience,
            "azp": "1" + str(abs(hash(email)) % 10**20),
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + lifetime,
            "iss": ISSUER,
            "sub": "1" + str(abs(hash(email)) % 10**20),
        }
        body.update(claims)
        return (key or self.key).token(body)

    # -- Gmail's side ---------------------------------------------------------------------------
    def watch(self, email: str, topic: str, label_ids: tuple[str, ...], behavior: str) -> Watch:
        if not _TOPIC.match(topic):
            raise bad_request(
                "Invalid topicName does not match projects/SOME-ANDROID-PROJECT/topics/*"
            )
        with self._lock:
            if topic not in self._subscriptions:
                raise GoogleApiError(404, f"Resource not found (resource={topic}).", "notFound")
            expiration = int((self.clock() + WATCH_DAYS * 86400) * 1000)
            watch = Watch(topic, label_ids, behavior, expiration)
            self._watches[email] = watch
            return watch

    def stop(self, email: str) -> None:
        with self._lock:
            self._watches.pop(email, None)

    def watch_of(self, email: str) -> Watch | None:
        """The mailbox's watch, if it has one that has not expired."""
        with self._lock:
            watch = self._watches.get(email)
        if watch is None or watch.expiration_ms <= self.clock() * 1000:
            return None
        return watch

    def changed(self, email: str, history_id: int, label_ids: Iterable[str]) -> None:
        """The mailbox changed (its history is at `history_id`): push if a watch wants it."""
        watch = self.watch_of(email)
        if watch is None or not watch.wants(label_ids):
            return
        with self._lock:
            subscription = self._subscriptions.get(watch.topic)
            message_id = str(next(self._ids))
        if subscription is None or not subscription.endpoint:
            return
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._deliver, name="sandbox-pubsub", daemon=True
                )
                self._worker.start()
        self._queue.put((subscription, email, history_id, message_id))

    # -- Pub/Sub's deliveries -----------------------------------------------------------------
    def envelope(
        self, subscription: PushSubscription, email: str, history_id: int, message_id: str
    ) -> dict[str, Any]:
        data = json.dumps({"emailAddress": email, "historyId": str(history_id)}).encode()
        published = datetime.fromtimestamp(self.clock(), UTC).isoformat().replace("+00:00", "Z")
        name = subscription.topic.rsplit("/", 1)[-1]
        project = subscription.topic.split("/")[1]
        return {
            "message": {
                "data": base64.b64encode(data).decode("ascii"),
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": published,
                "publish_time": published,
                "attributes": {},
            },
            "subscription": f"projects/{project}/subscriptions/{name}-push",
        }

    def _deliver(self) -> None:
        while True:
            subscription, email, history_id, message_id = self._queue.get()
            try:
                self._send(subscription, email, history_id, message_id)
            finally:
                self._queue.task_done()

    def _send(
        self, subscription: PushSubscription, email: str, history_id: int, message_id: str
    ) -> None:
        body = self.envelope(subscription, email, history_id, message_id)
        for _ in range(ATTEMPTS):
            headers = {}
            if subscription.authenticated:
                audience = subscription.audience or subscription.endpoint
                token = self.token(audience, email=subscription.service_account)
                headers["Authorization"] = f"Bearer {token}"
            try:
                status = self._session.post(
                    subscription.endpoint, json=body, headers=headers, timeout=10
                ).status_code
            except requests.RequestException:
                status = 0
            with self._lock:
                self.deliveries.append(
                    Delivery(subscription.endpoint, email, history_id, message_id, status)
                )
            if status and status < 500 and status != 429:
                return

    def wait(self) -> None:
        """Return once every push queued so far has been delivered (or given up)."""
        self._queue.join()


def register_push_routes(app: Flask, ctx: GmailContext, push: PubSubPush) -> None:
    """`users.watch`, `users.stop`, and the signing certificates, on the sandbox's app."""

    def watch(user_id: str) -> Response:
        with ctx.lock:
            ctx.meter.count("gmail.users.watch", 100)
            grant = _authorize(ctx.oauth, user_id)
            mailbox = ctx.mailboxes[grant.email]
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("topicName"), str):
                raise bad_request(
                    "Invalid topicName does not match projects/SOME-ANDROID-PROJECT/topics/*"
                )
            labels = body.get("labelIds") or []
            behavior = body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include"
            if not isinstance(labels, list) or behavior not in ("include", "exclude"):
                raise bad_request("Invalid labelIds or labelFilterBehavior")
            made = push.watch(grant.email, body["topicName"], tuple(map(str, labels)), behavior)
            answer = {"historyId": str(mailbox.history_id), "expiration": str(made.expiration_ms)}
        return json_response(answer)

    def stop(user_id: str) -> Response:
        with ctx.lock:
            ctx.meter.count("gmail.users.stop", 50)
            grant = _authorize(ctx.oauth, user_id)
            push.stop(grant.email)
        return Response(status=204)

    def certs() -> Response:
        response = json_response(push.certificates())
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    base = "/gmail/v1/users/<user_id>"
    app.add_url_rule(base + "/watch", "users_watch", watch, methods=["POST"])
    app.add_url_rule(base + "/stop", "users_stop", stop, methods=["POST"])
    app.add_url_rule(CERTS_PATH, "oauth2_certs", certs, methods=["GET"])
