"""Microsoft Graph change notifications run by maillink: subscriptions made, renewed, deleted.

With `[microsoft] notification_url` set, every active Microsoft mailbox gets one subscription per
folder it syncs (`[microsoft] folders`): `POST /subscriptions` on
`/users/{address}/mailFolders('{folder}')/messages`, changeType "created,updated", the same URL
for the lifecycle notifications, and a random `clientState` per subscription, stored encrypted
like the tokens. Graph validates the URL first (the handshake `/push/graph` answers). A message
subscription lasts at most 10,080 minutes; each one is renewed (`PATCH`) a day after it was made,
or halfway to its expiry if that comes first. A subscription made for another notification URL
(the configuration changed), or whose clientState no configured key decrypts, is deleted and
made again. A mailbox connected tenant-wide subscribes with the app's token (client credentials,
the application permission Mail.ReadBasic.All) on `/users/{directory id}/…`; a rep's own
mailbox with its delegated token. The loop, the claims between daemons and the deletions of a paused or removed
mailbox's subscriptions are the `Keeper`'s; this module says how Graph makes and deletes one.
What `/push/graph` does with the notifications is `maillink.push.graph_notifications`.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from maillink.errors import ConfigError, WrongKeyError
from maillink.providers.base import ProviderError
from maillink.providers.graph_api import GraphApi, GraphHTTPError
from maillink.providers.retry import RetryPolicy
from maillink.push.graph_notifications import (
    GraphNotifications,
    Handled,
    Notification,
    parse_notifications,
)
from maillink.push.keeper import (
    RETRY_AFTER,
    Keeper,
    Made,
    error_text,
)
from maillink.store import push
from maillink.store.accounts import Account
from maillink.store.push import Subscription

if TYPE_CHECKING:
    from maillink.app import App

__all__ = [
    "LIFETIME",
    "RETRY_AFTER",
    "GraphNotifications",
    "GraphSubscriptions",
    "Handled",
    "Notification",
    "describe",
    "mailbox_ref",
    "parse_notifications",
    "resource_for",
    "stop_subscriptions",
]

log = logging.getLogger("maillink.push")

MAX_LIFETIME = timedelta(minutes=10_080)  # Graph: an Outlook message subscription's maximum
LIFETIME = MAX_LIFETIME - timedelta(hours=1)  # asked for: a margin for the clocks' difference
CHANGE_TYPE = "created,updated"


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


def mailbox_ref(account: Account) -> str:
    """The mailbox in its subscriptions' resource: its address, or, for a mailbox connected
    tenant-wide (its calls carry the app's token), its directory id as its rounds use it."""
    if account.connected_via == "tenant" and account.directory_id:
        return account.directory_id
    return account.email


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
    """The mailbox's Graph API for its subscription calls (its stored MSAL cache, a rotated
    refresh token kept at once as a round keeps it; the app's token for a tenant-wide mailbox)."""
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


def _delete(api: SubscriptionApi, external_id: str) -> str | None:
    """`DELETE /subscriptions/{id}`; None when done (or already gone), else why not (it then
    expires by itself, and its notifications are acknowledged and ignored)."""
    try:
        api.delete(external_id)
    except (ProviderError, ConfigError) as exc:
        if isinstance(exc, ProviderError) and _status(exc) == 404:
            return None
        return f"deleting the subscription failed ({error_text(exc)}); it expires by itself"
    return None


class GraphSubscriptions(Keeper[SubscriptionApi]):
    """Keeps a subscription per active Microsoft mailbox and synced folder on `notification_url`
    (None: change notifications off, the subscriptions left from before deleted)."""

    kind = push.GRAPH_SUBSCRIPTION
    label = "graph subscription"

    @property
    def notification_url(self) -> str | None:
        return self.target

    @property
    def folders(self) -> tuple[str, ...]:
        return self.resources

    def watched(self) -> tuple[str, ...]:
        return tuple(self.app.settings.microsoft.folders)

    def api(self, account: Account) -> SubscriptionApi:
        return subscription_api(self.app, account)

    def make(self, account: Account, seen: Subscription, target: str, now: datetime) -> Made:
        """Renew `seen` when it is live, for `target`, and its clientState decrypts (it is then
        encrypted again under the newest key: a key rotation); else delete what is left of it
        and make a new one."""
        api = self.api_for(account)
        extra = {"event": self.kind, "account_id": account.id, "resource": seen.resource}
        alive = seen.live and seen.expires_at is not None and seen.expires_at > now
        secret = None
        if alive and seen.secret is not None and seen.target == target:
            try:
                secret = self.app.cipher.rotate(seen.secret)
            except WrongKeyError:  # made under a key since removed: made again
                secret = None
        if alive and secret is not None:
            assert seen.external_id is not None
            try:
                answer = api.renew(seen.external_id, now + LIFETIME)
                return Made(seen.external_id, self._expires(answer), secret=secret)
            except ProviderError as exc:
                if _status(exc) != 404:
                    raise
            log.info("graph subscription gone at Graph: made again", extra=extra)
        elif alive:
            assert seen.external_id is not None
            warning = _delete(api, seen.external_id)
            why = "another notification URL" if seen.target != target else "a lost key"
            log.info(
                "graph subscription made for %s: deleted and made again%s",
                why,
                f" ({warning})" if warning else "",
                extra=extra,
            )
        client_state = secrets.token_urlsafe(32)
        answer = api.create(
            resource_for(mailbox_ref(account), seen.resource), target, client_state, now + LIFETIME
        )
        external_id = str(answer.get("id") or "")
        if not external_id:
            raise ProviderError("Graph answered a subscription without an id")
        encrypted = self.app.cipher.encrypt(client_state)
        return Made(external_id, self._expires(answer), secret=encrypted)

    def _expires(self, answer: dict[str, Any]) -> datetime:
        return _parse_time(answer.get("expirationDateTime")) or self.clock() + LIFETIME

    def unmake(self, account: Account, subscription: Subscription) -> str | None:
        if subscription.external_id is None:
            return None
        return _delete(self.api_for(account), subscription.external_id)


# Delete the mailbox's Graph subscriptions now (a pause or a removal); None when there were none
# or they were deleted, else a one-line warning.
stop_subscriptions = GraphSubscriptions.stop_mailbox


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
