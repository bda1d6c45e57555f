"""Gmail push run by maillink: each active mailbox's `users.watch` made, renewed and stopped.

With `[gmail] push_topic` set, every active Gmail mailbox gets a watch on the INBOX and SENT
labels (the labels maillink syncs: a change elsewhere, a draft saved or spam arriving, would only
wake a round that finds nothing). A watch lasts at most 7 days; Google suggests renewing it daily,
so each one is renewed a day after it was made (or halfway to its expiry, if that comes first).
A new topic makes every watch again (a watch replaces the mailbox's previous one). The loop,
the claims between daemons and the stops are the `Keeper`'s; this module says how Gmail makes
and stops a watch. A mailbox paused (or needing re-authorisation) has its watch stopped
(`users.stop`); a removed one too, by `maillink accounts remove` before its tokens are forgotten.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from maillink.errors import ConfigError
from maillink.providers.base import ProviderError
from maillink.providers.gmail_api import GmailApi
from maillink.providers.retry import RetryPolicy
from maillink.push.keeper import (
    RENEW_EVERY,
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

__all__ = ["RENEW_EVERY", "RETRY_AFTER", "GmailWatches", "WatchApi", "describe", "stop_watches"]

WATCH_LABELS = ("INBOX", "SENT")  # the labels maillink syncs (providers/gmail.py)
DEFAULT_LIFETIME = timedelta(days=1)  # if Gmail's answer has no expiration (it always has one)
WATCH_UNITS = {"users.watch": 100, "users.stop": 50}  # Gmail's quota units for these calls


class WatchApi:
    """`users.watch` and `users.stop` of one mailbox, through its Gmail API (metered, paced and
    retried like the round's calls)."""

    def __init__(self, api: GmailApi) -> None:
        self.api = api

    def watch(self, topic: str, label_ids: tuple[str, ...] = WATCH_LABELS) -> dict[str, Any]:
        """Start (or renew) the mailbox's watch; Gmail answers its historyId and expiration."""
        body = {"topicName": topic, "labelIds": list(label_ids), "labelFilterBehavior": "include"}
        return self.api.users_call("users.watch", WATCH_UNITS["users.watch"], body)

    def stop(self) -> None:
        """Stop the mailbox's push notifications (Gmail answers 204, no body)."""
        self.api.users_call("users.stop", WATCH_UNITS["users.stop"], empty=True)


def watch_api(app: App, account: Account, policy: RetryPolicy | None = None) -> WatchApi:
    """The mailbox's Gmail API for its watch calls, with the credentials a round of it uses."""
    credentials, on_token = app.gmail_credentials(account)
    pacers = app.gmail_pacers
    return WatchApi(
        GmailApi(
            credentials,
            api_endpoint=app.settings.gmail.api_endpoint,
            http_timeout=30.0,
            batch_size=1,
            policy=policy or RetryPolicy(),
            pacer=pacers.for_mailbox(account.email) if pacers else None,
            quota_model=app.settings.gmail.quota_model,
            on_token=on_token,
        )
    )


def _expiration(answer: dict[str, Any], now: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(int(answer["expiration"]) / 1000, UTC)
    except (KeyError, TypeError, ValueError, OverflowError):
        return now + DEFAULT_LIFETIME


class GmailWatches(Keeper[WatchApi]):
    """Keeps every active Gmail mailbox's watch on `topic` (None: push off, watches stopped)."""

    kind = push.GMAIL_WATCH
    label = "gmail watch"

    @property
    def topic(self) -> str | None:
        return self.target

    def watched(self) -> tuple[str, ...]:
        return (push.MAILBOX,)  # one watch on the whole mailbox; its labels filter it

    def api(self, account: Account) -> WatchApi:
        return watch_api(self.app, account)

    def make(self, account: Account, seen: Subscription, target: str, now: datetime) -> Made:
        answer = self.api_for(account).watch(target)
        history = answer.get("historyId")
        return Made(
            external_id=target,  # a watch has no id of its own: the topic names it
            expires_at=_expiration(answer, self.clock()),
            history_id=str(history) if history is not None else None,
        )

    def unmake(self, account: Account, subscription: Subscription) -> str | None:
        """`users.stop`; a failure leaves the watch to expire within 7 days, its pushes
        acknowledged and ignored."""
        try:
            self.api_for(account).stop()
        except (ProviderError, ConfigError) as exc:
            return f"users.stop failed ({error_text(exc)}); the watch expires by itself"
        return None


# Stop the mailbox's Gmail watch now (a pause or a removal); None when there was none or it was
# stopped, else a one-line warning.
stop_watches = GmailWatches.stop_mailbox


def describe(subscriptions: list[Subscription], *, expected: bool) -> str:
    """A mailbox's push state for `maillink accounts`: "watching until …", "off", "failed: …",
    or "pending" when a watch is `expected` (push on, an active Gmail mailbox) but not made yet."""
    watch = next((s for s in subscriptions if s.kind == push.GMAIL_WATCH), None)
    if watch is None or watch.state in (push.STOPPED, push.PENDING):
        return "pending" if expected else "off"
    if watch.state == push.FAILED:
        until = (
            f" (the last watch lasts until {watch.expires_at:%Y-%m-%d %H:%M} UTC)"
            if watch.expires_at is not None
            else ""
        )
        return f"failed: {watch.last_error or 'unknown error'}{until}"
    assert watch.expires_at is not None
    return f"watching until {watch.expires_at:%Y-%m-%d %H:%M} UTC"
