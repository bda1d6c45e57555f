"""The Gmail adapter: pull pages of new messages (headers only) since a cursor (docs/how-it-works.md).

First sync: getProfile's historyId first, then messages.list newest first, page by page; each
page's new messages are read by `RoundFetcher` in batch requests. Incremental: history.list from
the stored historyId, following every page; the new historyId rides on the round's last page, so
it is stored only once every page of the round is committed. A history too old to replay (404)
means a full re-sync, deduplicated against what the store already holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from maillink.providers.base import Known, Page, ProviderError
from maillink.providers.gmail_api import GmailApi
from maillink.providers.gmail_cursor import GmailCursor, PageTokens
from maillink.providers.gmail_fetch import SKIPPED_LABELS, Fetched, RoundFetcher
from maillink.providers.google_token import GoogleCredentials
from maillink.providers.pacing import Pacer
from maillink.providers.prefetch import prefetched
from maillink.providers.retry import ResyncRequired, RetryPolicy

log = logging.getLogger("maillink.providers.gmail")

# A label added that makes a message one to sync if it was not (a draft sent, spam rescued).
ARRIVING_LABELS = frozenset({"SENT", "INBOX"})


Strategy = Literal["cheapest", "per_message"]


class GmailProvider:
    """One Gmail mailbox, read with the gmail.metadata scope. Implements `MailProvider`.

    `pacer` spends the mailbox's quota units at a steady rate (`quota_model` says what each call
    costs). `strategy` "per_message" is the naive way, kept for the benchmark's comparison: one
    messages.get request per message. `prefetch` reads the next page while the caller stores
    and links the one in hand. `on_token` is told of each new access token (to keep it for the
    next process: a restart then refreshes nothing that is still valid).
    """

    def __init__(
        self,
        account: str,
        credentials: GoogleCredentials,
        *,
        api_endpoint: str,
        aliases: tuple[str, ...] = (),
        page_size: int = 500,
        batch_size: int = 50,
        http_timeout: float = 60.0,
        policy: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        quota_model: str = "2025",
        strategy: Strategy = "cheapest",
        prefetch: bool = False,
        on_token: Callable[[str, datetime], None] | None = None,
    ) -> None:
        if not 1 <= page_size <= 500:
            raise ValueError(f"page_size must be 1 to 500, not {page_size}")
        if not 1 <= batch_size <= 100:
            raise ValueError(f"batch_size must be 1 to 100, not {batch_size}")
        if strategy == "per_message":
            batch_size = 1
        self.account = account
        self.aliases = tuple(aliases)
        self._page_size = page_size
        self._batch_size = batch_size
        self._per_message = strategy == "per_message"
        self._prefetch = prefetch
        self._api = GmailApi(
            credentials,
            api_endpoint=api_endpoint,
            http_timeout=http_timeout,
            batch_size=batch_size,
            policy=policy or RetryPolicy(),
            pacer=pacer,
            quota_model=quota_model,
            on_token=on_token,
        )

    @property
    def quota_units(self) -> int:
        """Gmail quota units this instance spent (per-call model: [gmail] quota_model)."""
        return self._api.quota_units

    @property
    def http_requests(self) -> int:
        """HTTP requests this instance sent (a batch counts once; token refreshes count)."""
        return self._api.http_requests

    def pull(
        self, cursor: str | None, known: Known, *, since: datetime | None = None
    ) -> Iterator[Page]:
        """Pages of new messages since `cursor`; store each page's cursor (when not None) with it.

        `since` drops messages older than it, and ends a first sync's listing at the first
        page whose newest messages are all older.
        """
        pages = self._pages(GmailCursor.loads(cursor), known, since)
        return prefetched(pages) if self._prefetch else pages

    def _pages(
        self, state: GmailCursor | None, known: Known, since: datetime | None
    ) -> Iterator[Page]:
        since = _utc(since) if since is not None else None
        fetcher = RoundFetcher(
            self._api,
            self.account,
            self.aliases,
            batch_size=self._batch_size,
            per_message=self._per_message,
        )
        try:
            if state is None:
                yield from self._listing(None, None, known, since, fetcher)
            elif state.phase == "list":
                yield from self._listing(state.history_id, state.page_token, known, since, fetcher)
            else:
                yield from self._history(state.history_id, known, since, fetcher)
        finally:
            self._api.release()  # idle until the next round: no client, no connection held

    # --- first sync ----------------------------------------------------------------------

    def _listing(
        self,
        history_id: str | None,
        page_token: str | None,
        known: Known,
        since: datetime | None,
        fetcher: RoundFetcher,
    ) -> Iterator[Page]:
        if history_id is None:
            # Read before listing: whatever arrives while we list is in the history after it.
            history_id = str(self._api.profile().get("historyId") or "")
            if not history_id.isdigit():
                raise ProviderError(f"{self.account}: Gmail's profile holds no historyId")
        tokens = PageTokens("gmail messages.list")
        tokens.advance(page_token)
        resumed = page_token is not None
        while True:
            try:
                response = self._api.list_messages(page_token, self._page_size, resumed=resumed)
            except ResyncRequired:
                log.warning("%s: stored page token refused; listing again", self.account)
                tokens, page_token, resumed = PageTokens("gmail messages.list"), None, False
                continue
            resumed = False
            listed = _ids(response.get("messages"))
            next_token = tokens.advance(response.get("nextPageToken"))
            fetched = self._fetch(listed, known, since, fetcher)
            final = next_token is None or fetched.all_older
            cursor = (
                GmailCursor.history(history_id)
                if final
                else GmailCursor.listing(history_id, next_token)
            )
            yield self._page(fetched, since, cursor=cursor.dumps(), listed=len(listed))
            if final:
                return
            page_token = next_token

    # --- incremental ---------------------------------------------------------------------

    def _history(
        self, start: str, known: Known, since: datetime | None, fetcher: RoundFetcher
    ) -> Iterator[Page]:
        tokens = PageTokens("gmail history.list")
        page_token: str | None = None
        emitted: set[str] = set()  # a message added on one page may reappear on a later one
        while True:
            try:
                response = self._api.list_history(start, page_token, self._page_size)
            except ResyncRequired:
                log.warning("%s: history %s is too old; full re-sync", self.account, start)
                yield from self._listing(None, None, known, since, fetcher)
                return
            added, removed = _changes(response.get("history"))
            next_token = tokens.advance(response.get("nextPageToken"))
            fresh = [(m, t) for m, t in added.items() if m not in emitted]
            fetched = self._fetch(fresh, known, since, fetcher, in_order=False)
            emitted.update(message.provider_id for message in fetched.messages)
            cursor = None
            if next_token is None:
                cursor = GmailCursor.history(str(response.get("historyId") or start)).dumps()
            yield self._page(
                fetched, since, cursor=cursor, removed=removed, listed=len(added) + len(removed)
            )
            if next_token is None:
                return
            page_token = next_token

    # --- shared --------------------------------------------------------------------------

    def _fetch(
        self,
        listed: Sequence[tuple[str, str]],
        known: Known,
        since: datetime | None,
        fetcher: RoundFetcher,
        *,
        in_order: bool = True,
    ) -> Fetched:
        """The messages of `listed` that the store does not hold yet."""
        held = known.known_messages([m for m, _ in listed]) if listed else set()
        new = [(m, t) for m, t in listed if m not in held]
        if not new:
            return Fetched([], {})
        dates = {
            thread: _utc(date)
            for thread, date in known.thread_dates(dict.fromkeys(t for _, t in new)).items()
        }
        return fetcher.fetch(new, dates, older_than=since if in_order else None)

    @staticmethod
    def _page(
        fetched: Fetched,
        since: datetime | None,
        *,
        cursor: str | None,
        listed: int,
        removed: Sequence[str] = (),
    ) -> Page:
        messages = [
            m for m in fetched.messages if since is None or m.date is None or m.date >= since
        ]
        threads = {m.thread_key for m in messages}
        return Page(
            messages=tuple(messages),
            thread_dates={t: d for t, d in fetched.thread_dates.items() if t in threads},
            removed=tuple(removed),
            cursor=cursor,
            listed=listed,
        )


def _utc(date: datetime) -> datetime:
    """Aware UTC; a naive datetime (as some stores give back) is taken as UTC."""
    return date.replace(tzinfo=UTC) if date.tzinfo is None else date.astimezone(UTC)


def _ids(items: Any) -> list[tuple[str, str]]:
    """(message id, thread id) of a list of `{"id", "threadId"}` objects."""
    found = []
    for item in items or ():
        if isinstance(item, Mapping) and item.get("id"):
            found.append((str(item["id"]), str(item.get("threadId") or item["id"])))
    return found


def _changes(history: Any) -> tuple[dict[str, str], list[str]]:
    """Messages to read (id → thread id) and ids removed, from a page of history records.

    A message added as a draft or into spam is not read; it is when it later gets SENT or INBOX
    (a draft sent, spam rescued). Labels added to a message already stored are ignored for now
    (a known message moving between INBOX and SENT changes nothing the linker uses).
    """
    added: dict[str, str] = {}
    removed: dict[str, None] = {}
    for record in history or ():
        if not isinstance(record, Mapping):
            continue
        for item in record.get("messagesAdded") or ():
            message = item.get("message") or {}
            if SKIPPED_LABELS.isdisjoint(message.get("labelIds") or ()):
                _add(added, message)
        for item in record.get("labelsAdded") or ():
            message = item.get("message") or {}
            arriving = not ARRIVING_LABELS.isdisjoint(item.get("labelIds") or ())
            if arriving and SKIPPED_LABELS.isdisjoint(message.get("labelIds") or ()):
                _add(added, message)
        for item in record.get("messagesDeleted") or ():
            message_id = str((item.get("message") or {}).get("id") or "")
            if message_id:
                added.pop(message_id, None)
                removed[message_id] = None
    return added, list(removed)


def _add(added: dict[str, str], message: Mapping[str, Any]) -> None:
    message_id = str(message.get("id") or "")
    if message_id and message_id not in added:
        added[message_id] = str(message.get("threadId") or message_id)
