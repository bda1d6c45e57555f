"""Microsoft Graph change notifications run by maillink: subscriptions made, renewed, deleted.

With `[microsoft] notification_url` set, every active Microsoft mailbox gets one subscription per
folder it syncs (`[microsoft] folders`): `POST /subscriptions` on
`/users/{address}/mailFolders('{folder}')/messages`, changeType "created,updated", the same URL
for the lifecycle notifications, and a random `clientState` per subscription, stored encrypted
like the tokens. Graph validates the URL first (the handshake `/push/graph` answers). A message
subscription lasts at most 10,080 minutes; each one is renewed (`PATCH`) a day after it was made,
or halfway to its expiry if that comes first. The daemon checks every `CHECK_EVERY_SECONDS`, and at
once when a lifecycle notification asks for it; due rows are claimed by the same compare-and-set
as Gmail's watches (`store.push.claim`), so only one daemon calls Graph. A mailbox paused or
removed has its subscriptions deleted (`DELETE /subscriptions/{id}`).

`GraphNotifications` is what `/push/graph` does with a batch: each item's `clientState` compared
(constant time) with the stored one of its `subscriptionId`, unknown or forged items ignored,
and the mailbox only woken (the delta cursor stays the truth). Lifecycle notifications:
`reauthorizationRequired` renews the subscription now, `subscriptionRemoved` makes it again,
`missed` wakes the mailbox for a normal delta round.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy.exc import SQLAlchemyError

from maillink.errors import ConfigError, WrongKeyError
from maillink.ops.webhooks import BadPayload
from maillink.providers.base import ProviderError
from maillink.providers.graph_api import GraphApi, GraphHTTPError
from maillink.providers.retry import RetryPolicy
from maillink.push.gmail_watch import renewal_time
from maillink.secrets import TokenCipher
from maillink.store import Store, accounts, push
from maillink.store.accounts import Account
from maillink.store.push import Subscription

if TYPE_CHECKING:
    from maillink.app import App

log = logging.getLogger("maillink.push")

MAX_LIFETIME = timedelta(minutes=10_080)  # Graph: an Outlook message subscription's maximum
LIFETIME = MAX_LIFETIME - timedelta(hours=1)  # asked for: a margin for the clocks' difference
CLAIM_FOR = timedelta(minutes=5)
RETRY_AFTER = timedelta(minutes=15)
CHECK_EVERY_SECONDS = 60.0
BATCH, MAX_BATCHES = 100, 50
CHANGE_TYPE = "created,updated"
MAX_ITEMS = 1000  # notifications in one batch; Graph sends far fewer
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # Graph writes 7 fractional digits; Python reads at most 6
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def resource_for(email: str, folder: str) -> str:
    """The Graph resource of a folder's messages in the mailbox `email`."""
    return f"/users/{quote(email, safe='@')}/mailFolders('{quote(folder, safe='')}')/messages"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _status(exc: BaseException) -> int | None:
    cause = exc.__cause__
    return cause.status if isinstance(cause, GraphHTTPError) else None


class SubscriptionApi:
    """The `/subscriptions` calls of one mailbox, through its Graph session and retry policy."""

    def __init__(self, api: GraphApi) -> None:
        self.api = api

    def create(
        self, resource: str, notification_url: str, client_state: str, expires: datetime
    ) -> dict[str, Any]:
        body = {
            "changeType": CHANGE_TYPE,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": _iso(expires),
            "clientState": client_state,
        }
        return self.api.send("POST", "/subscriptions", body, what="graph subscription create")

    def renew(self, subscription_id: str, expires: datetime) -> dict[str, Any]:
        path = f"/subscriptions/{quote(subscription_id, safe='')}"
        body = {"expirationDateTime": _iso(expires)}
        return self.api.send("PATCH", path, body, what="graph subscription renew")

    def delete(self, subscription_id: str) -> None:
        path = f"/subscriptions/{quote(subscription_id, safe='')}"
        self.api.send("DELETE", path, what="graph subscription delete")


def subscription_api(app: App, account: Account) -> SubscriptionApi:
    """The mailbox's Graph API for its subscription calls (its stored MSAL cache; a rotated
    refresh token is kept at once, as a round keeps it)."""
    source = app.microsoft_token_source(account)
    pacers = app.graph_pacers
    return SubscriptionApi(
        GraphApi(
            source,
            graph_url=app.settings.microsoft.graph_url,
            max_concurrency=1,
            page_size=10,
            policy=RetryPolicy(),
            http_timeout=30.0,
            pacer=pacers.for_mailbox(account.email) if pacers else None,
        )
    )


ApiFor = Callable[[Account], SubscriptionApi]


@dataclass
class CheckResult:
    """What one check did: subscriptions made or renewed, deleted, failed."""

    subscribed: int = 0
    stopped: int = 0
    failed: int = 0


class GraphSubscriptions:
    """Keeps a subscription per active Microsoft mailbox and synced folder on `notification_url`
    (None: change notifications off, the subscriptions left from before deleted)."""

    def __init__(
        self,
        app: App,
        notification_url: str | None,
        *,
        clock: Callable[[], datetime] = _now,
        api_for: ApiFor | None = None,
        check_every: float = CHECK_EVERY_SECONDS,
    ) -> None:
        self.app = app
        self.notification_url = notification_url
        self.folders = tuple(app.settings.microsoft.folders)
        self.clock = clock
        self.api_for: ApiFor = api_for or (lambda account: subscription_api(app, account))
        self.check_every = check_every
        self._checked_at: float | None = None
        self._again = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- the daemon's periodic call --------------------------------------------------------------
    def tick(self) -> None:
        """Start a check in the background when one is due and none is running (cheap)."""
        with self._lock:
            now = time.monotonic()
            if self._thread is not None and self._thread.is_alive():
                return
            if not self._again:
                if self.notification_url is None and self._checked_at is not None:
                    return
                if self._checked_at is not None and now - self._checked_at < self.check_every:
                    return
            self._again = False
            self._checked_at = now
            self._thread = threading.Thread(target=self._check_logged, name="maillink-push-graph")
            self._thread.daemon = True
            self._thread.start()

    def poke(self) -> None:
        """A subscription was made due now (a lifecycle notification): check at once, or again
        right after the check that is running."""
        with self._lock:
            self._again = True
        self.tick()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running check (and the one a poke asked for meanwhile)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            thread = self._thread
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if not self._again or (deadline is not None and time.monotonic() >= deadline):
                return
            self.tick()

    def _check_logged(self) -> None:
        while True:
            try:
                self.check()
            except SQLAlchemyError as exc:
                log.warning("graph subscriptions: the store failed: %s", type(exc).__name__)
            except Exception:
                log.exception("graph subscriptions: check failed")
            with self._lock:
                if not self._again:
                    return
                self._again = False

    # -- one check ----------------------------------------------------------------------------
    def check(self) -> CheckResult:
        """Make the missing subscriptions, renew the due ones, delete those no longer wanted."""
        result = CheckResult()
        store = self.app.store
        on = self.notification_url is not None
        with store.transaction() as conn:
            if on:
                push.ensure_graph_subscriptions(conn, self.folders, self.clock())
            to_stop = push.graph_subscriptions_to_stop(conn, self.folders, all_active=not on)
        for _ in range(MAX_BATCHES if on else 0):
            with store.engine.connect() as conn:
                due = push.due_graph_subscriptions(conn, self.clock(), self.folders, BATCH)
            for subscription in due:
                outcome = self._renew(subscription)
                if outcome is not None:
                    result.subscribed += outcome
                    result.failed += 1 - outcome
            if len(due) < BATCH:
                break
        for subscription in to_stop:
            if self._stop(subscription):
                result.stopped += 1
        return result

    def _renew(self, seen: Subscription) -> int | None:
        """1 when the subscription was made or renewed, 0 when it failed, None when another
        daemon had it."""
        url = self.notification_url
        assert url is not None
        now = self.clock()
        with self.app.store.transaction() as conn:
            if not push.claim(conn, seen, now + CLAIM_FOR, now):
                return None
            account = accounts.get_by_id(conn, seen.account_id)
        if account is None or account.status != accounts.ACTIVE:
            return None
        extra = {"event": "graph_subscription", "account_id": account.id, "folder": seen.resource}
        live = (
            seen.state in (push.ACTIVE_WATCH, push.FAILED)
            and seen.external_id is not None
            and seen.secret is not None
            and seen.expires_at is not None
            and seen.expires_at > now
        )
        secret = None
        if live:
            assert seen.secret is not None
            try:  # a renewal re-encrypts the clientState under the newest key (a key rotation)
                secret = self.app.cipher.rotate(seen.secret)
            except WrongKeyError:  # made under a key since removed: made again
                live = False
        try:
            api = self.api_for(account)
            external_id, answer = None, None
            if live:
                assert seen.external_id is not None
                try:
                    answer = api.renew(seen.external_id, now + LIFETIME)
                    external_id = seen.external_id
                except ProviderError as exc:
                    if _status(exc) != 404:
                        raise
                    log.info("graph subscription gone at Graph: made again", extra=extra)
            if answer is None:
                client_state = secrets.token_urlsafe(32)
                answer = api.create(
                    resource_for(account.email, seen.resource), url, client_state, now + LIFETIME
                )
                external_id = str(answer.get("id") or "")
                secret = self.app.cipher.encrypt(client_state)
                if not external_id:
                    raise ProviderError("Graph answered a subscription without an id")
        except (ProviderError, ConfigError) as exc:
            now = self.clock()
            with self.app.store.transaction() as conn:
                push.subscription_failed(
                    conn, seen.id, error=_error(exc), retry_at=now + RETRY_AFTER, now=now
                )
            log.warning("graph subscription failed: %s", _error(exc), extra=extra)
            return 0
        assert external_id is not None and secret is not None
        now = self.clock()
        expires_at = _parse_time(answer.get("expirationDateTime")) or now + LIFETIME
        with self.app.store.transaction() as conn:
            push.subscribed(
                conn,
                seen.id,
                external_id=external_id,
                secret=secret,
                expires_at=expires_at,
                renew_at=renewal_time(now, expires_at),
                now=now,
            )
        log.info("graph subscription until %s", expires_at.isoformat(), extra=extra)
        return 1

    def _stop(self, subscription: Subscription) -> bool:
        now = self.clock()
        with self.app.store.transaction() as conn:
            if not push.claim(conn, subscription, None, now):
                return False
            account = accounts.get_by_id(conn, subscription.account_id)
        error = None
        if account is not None and subscription.external_id is not None:
            error = delete_at_graph(self.api_for, account, subscription.external_id)
        with self.app.store.transaction() as conn:
            push.stopped(conn, subscription.id, self.clock(), error)
        log.info(
            "graph subscription deleted%s",
            f": {error}" if error else "",
            extra={"event": "graph_subscription_stop", "account_id": subscription.account_id},
        )
        return True


def delete_at_graph(api_for: ApiFor, account: Account, external_id: str) -> str | None:
    """`DELETE /subscriptions/{id}`; None when done (or already gone), else why not (it then
    expires by itself, and its notifications are acknowledged and ignored)."""
    try:
        api_for(account).delete(external_id)
    except (ProviderError, ConfigError) as exc:
        if isinstance(exc, ProviderError) and _status(exc) == 404:
            return None
        return f"deleting the subscription failed ({_error(exc)}); it expires by itself"
    return None


def stop_subscriptions(
    app: App,
    account: Account,
    *,
    clock: Callable[[], datetime] = _now,
    api_for: ApiFor | None = None,
) -> str | None:
    """Delete the mailbox's Graph subscriptions now (a pause or a removal); None when there were
    none or they were deleted, else a one-line warning."""
    if account.provider != "microsoft":
        return None
    with app.store.engine.connect() as conn:
        live = [
            s
            for s in push.for_account(conn, account.id, push.GRAPH_SUBSCRIPTION)
            if s.state != push.STOPPED
        ]
    if not live:
        return None
    api_for = api_for or (lambda a: subscription_api(app, a))
    outcomes = [
        delete_at_graph(api_for, account, s.external_id)
        if s.external_id is not None and s.state != push.PENDING
        else None
        for s in live
    ]
    with app.store.transaction() as conn:
        for subscription, warning in zip(live, outcomes, strict=True):
            push.stopped(conn, subscription.id, clock(), warning)
    return next((w for w in outcomes if w), None)


def describe(subscriptions: list[Subscription], *, expected: bool) -> str:
    """A Microsoft mailbox's push state for `maillink accounts`: "subscribed (N folders) until
    …", "off", "failed: …", or "pending" when subscriptions are `expected` but not all made."""
    graph = [s for s in subscriptions if s.kind == push.GRAPH_SUBSCRIPTION]
    live = [s for s in graph if s.state not in (push.STOPPED, push.PENDING)]
    failed = [s for s in live if s.state == push.FAILED]
    if failed:
        return f"failed ({failed[0].resource}): {failed[0].last_error or 'unknown error'}"
    if not live or (expected and any(s.state == push.PENDING for s in graph)):
        return "pending" if expected else "off"
    until = min(s.expires_at for s in live if s.expires_at is not None)
    folders = len(live)
    return f"subscribed ({folders} folder{'s' if folders > 1 else ''}) until {until:%Y-%m-%d %H:%M} UTC"


# -- what /push/graph does with a notification batch ---------------------------------------------
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
        clock: Callable[[], datetime] = _now,
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
                    push.forget_subscription(conn, subscription.id, self.clock())
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
