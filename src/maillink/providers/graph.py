"""The Microsoft Graph adapter: pull pages of new messages (headers only) since a cursor
(docs/how-it-works.md), with the Mail.ReadBasic scope.

Delta is per folder (inbox, sentitems, and any configured folder), one round per folder in turn:
the first request carries the $select of the header fields (and, for a backfill, the filter
`receivedDateTime ge since`), every request `Prefer: odata.maxpagesize=…, IdType="ImmutableId"`,
and the nextLinks are followed verbatim once they are known to point at the Graph root. Each page
carries the cursor: the round in progress (resumable), and the folder's new deltaLink only on the
round's last page, so it is stored with that page. 410 / syncStateNotFound / resyncRequired:
that folder's round starts over, deduplicated against what the store holds.

Graph documents that a filtered delta returns at most 5,000 messages: a filtered initial round
that comes back that full is not trusted; the window is listed by date instead
(/mailFolders/{f}/messages, newest first), then the folder's delta round starts where the
listing began, with a window small enough for the cap.

Items: ``@removed`` means "left this folder" (a move, a deletion): it is reported as removed only
if the message was not seen in another tracked folder in this pull. Updates may carry only the
changed properties: a partial item of a message the store holds is ignored (no header the linker
uses changes after delivery); of a message it does not hold, the full header set is fetched (in
$batch requests). The same item may come twice (replays): it is emitted once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from maillink.model import Message
from maillink.providers.base import Known, Page, ProviderError
from maillink.providers.graph_api import MAX_BATCH, GraphApi, Part
from maillink.providers.graph_cursor import FolderState, GraphCursor, Links
from maillink.providers.graph_messages import (
    HEADER_FIELDS,
    REPLY_HEADER_FIELD,
    is_partial,
    message_from_graph,
    own_addresses,
    parse_graph_date,
)
from maillink.providers.graph_threads import ThreadDates, ThreadKeys, _Bounded
from maillink.providers.pacing import Pacer
from maillink.providers.retry import ResyncRequired, RetryPolicy

log = logging.getLogger("maillink.providers.graph")

FILTERED_DELTA_CAP = 5000  # "Applying $filter in a delta query returns only up to 5,000 messages."
LISTING_OVERLAP = timedelta(hours=1)  # the delta round after a listing starts this much earlier
SEEN_LIMIT = 50_000  # ids remembered per pull (replays, moves between folders)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GraphProvider:
    """One Outlook / Microsoft 365 mailbox through Microsoft Graph. Implements `MailProvider`."""

    def __init__(
        self,
        account: str,
        token_source: Callable[[], str],
        *,
        graph_url: str,
        folders: tuple[str, ...] = ("inbox", "sentitems"),
        page_size: int = 100,
        max_concurrency: int = 4,
        aliases: Sequence[str] = (),
        reply_headers: bool = False,
        filtered_delta_cap: int = FILTERED_DELTA_CAP,
        lookup_group: int = 15,
        batch_size: int = MAX_BATCH,
        http_timeout: float = 60.0,
        policy: RetryPolicy | None = None,
        ca_bundle: str | None = None,
        pacer: Pacer | None = None,
        root: str = "/me",
    ) -> None:
        """`root` is the mailbox's path on Graph: "/me" for a mailbox whose user signed in,
        "/users/{id}" for one read with the app's own token (a tenant-wide connection)."""
        if not folders:
            raise ValueError("at least one folder must be tracked")
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be 1 to 1000, not {page_size}")
        if not 1 <= max_concurrency <= 4:
            raise ValueError(
                f"max_concurrency must be 1 to 4 (Outlook's limit), not {max_concurrency}"
            )
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}, not {batch_size}")
        if not 1 <= lookup_group <= 50:
            raise ValueError(f"lookup_group must be 1 to 50, not {lookup_group}")
        self.account = account
        self.aliases = tuple(aliases)
        self.folders = tuple(dict.fromkeys(f.strip() for f in folders))
        self.fields = HEADER_FIELDS + ((REPLY_HEADER_FIELD,) if reply_headers else ())
        self.filtered_delta_cap = filtered_delta_cap
        self.root = root.rstrip("/")
        self._page_size = page_size
        self._own = own_addresses(account, self.aliases)
        self._api = GraphApi(
            token_source,
            graph_url=graph_url,
            max_concurrency=max_concurrency,
            page_size=page_size,
            policy=policy or RetryPolicy(),
            http_timeout=http_timeout,
            ca_bundle=ca_bundle,
            batch_size=batch_size,
            pacer=pacer,
        )
        self._dates = ThreadDates(self._api, self._own, group=lookup_group, root=self.root)

    @property
    def http_requests(self) -> int:
        """Graph HTTP requests this instance sent (a $batch counts once; token calls do not)."""
        return self._api.http_requests

    @property
    def conversations_looked_up(self) -> int:
        return self._dates.lookups

    def pull(
        self, cursor: str | None, known: Known, *, since: datetime | None = None
    ) -> Iterator[Page]:
        """Pages of changes since `cursor`; store each page's cursor with the page.

        `since` (a first sync, a backfill) limits the initial rounds to mail received since then.
        """
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        state = GraphCursor.loads(cursor)
        if state is None:
            state = GraphCursor(since=_iso(since) if since is not None else None)
        run = _Pull(self, self._api, state, known, since)
        for folder in self.folders:
            yield from run.folder(folder)


@dataclass
class _Read:
    messages: list[Message]
    thread_dates: dict[str, datetime]
    removed: list[str]
    listed: int


class _Pull:
    """One pull: the folders' rounds in turn, and what this pull has seen (bounded)."""

    def __init__(
        self,
        provider: GraphProvider,
        api: GraphApi,
        cursor: GraphCursor,
        known: Known,
        since: datetime | None,
    ):
        self.p = provider
        self.api = api
        self.cursor = cursor
        self.known = known
        self.since = since  # drops older messages from the pages, as the Gmail adapter does
        self.keys = ThreadKeys(cursor)
        self.emitted: _Bounded = _Bounded(SEEN_LIMIT)
        self.present: _Bounded = _Bounded(SEEN_LIMIT)  # id → folder it was seen in
        self.removed: _Bounded = _Bounded(SEEN_LIMIT)  # ids reported removed in this pull

    # --- rounds --------------------------------------------------------------------------

    def folder(self, folder: str) -> Iterator[Page]:
        state = self.cursor.folder(folder)
        restarted = False
        while True:
            try:
                if state.list:
                    yield from self._listing(folder, state)
                yield from self._delta(folder, state)
                if not state.list:
                    return
            except ResyncRequired as exc:
                if restarted:
                    raise ProviderError(
                        f"graph {folder}: a fresh round was refused too ({exc})"
                    ) from exc
                restarted = True
                log.warning(
                    "%s: %s: %s; the folder's round starts over", self.p.account, folder, exc
                )
                state.restart()

    def _delta(self, folder: str, state: FolderState) -> Iterator[Page]:
        if state.next or state.delta:
            url, resumed = str(state.next or state.delta), True
        else:
            url, resumed = self._initial_url(folder, state), False
        links = Links(f"graph delta {folder}")
        links.advance(url)
        while True:
            response = self.api.get(
                url, call="page" if resumed else None, what=f"graph delta {folder}"
            )
            resumed = False
            items = [i for i in response.get("value") or () if isinstance(i, Mapping)]
            next_link = response.get("@odata.nextLink")
            delta_link = response.get("@odata.deltaLink")
            if not isinstance(next_link, str) and not isinstance(delta_link, str):
                raise ProviderError(
                    f"graph delta {folder}: a page with neither nextLink nor deltaLink"
                )
            if state.counting:
                state.seen += sum(1 for i in items if "@removed" not in i)
            read = self._read(items, folder)
            if isinstance(next_link, str):
                state.next = links.advance(self.api.check_link(next_link))
                yield self._page(read)
                url = next_link
                continue
            state.next = None
            if state.counting and state.seen >= self.p.filtered_delta_cap:
                log.warning(
                    "%s: %s holds %d+ messages since %s, Graph's cap for a filtered delta: "
                    "listing them by date instead",
                    self.p.account,
                    folder,
                    state.seen,
                    self.cursor.since,
                )
                state.counting, state.seen, state.list = False, 0, True
                yield self._page(read)
                return
            state.delta = self.api.check_link(str(delta_link))
            state.counting, state.seen, state.after = False, 0, None
            yield self._page(read)
            return

    def _initial_url(self, folder: str, state: FolderState) -> str:
        params = {"$select": ",".join(self.p.fields)}
        start = state.after or self.cursor.since
        if start:
            params["$filter"] = f"receivedDateTime ge {start}"
        # Only a round filtered by the backfill's window can hit the cap; the one after a
        # listing starts late enough not to.
        state.counting = bool(start) and state.after is None
        state.seen = 0
        query = urlencode(params, quote_via=quote, safe="$,:")
        folder_path = f"{self.p.root}/mailFolders/{quote(folder, safe='')}"
        return self.api.url(f"{folder_path}/messages/delta?{query}")

    def _listing(self, folder: str, state: FolderState) -> Iterator[Page]:
        if state.list_next:
            url, resumed = state.list_next, True
        else:
            query = urlencode(
                {
                    "$filter": f"receivedDateTime ge {self.cursor.since}",
                    "$orderby": "receivedDateTime desc",
                    "$select": ",".join(self.p.fields),
                    "$top": str(self.p._page_size),
                },
                quote_via=quote,
                safe="$,:",
            )
            url, resumed = (
                self.api.url(
                    f"{self.p.root}/mailFolders/{quote(folder, safe='')}/messages?{query}"
                ),
                False,
            )
        links = Links(f"graph listing {folder}")
        links.advance(url)
        while True:
            response = self.api.get(
                url, call="page" if resumed else None, what=f"graph list {folder}"
            )
            resumed = False
            items = [i for i in response.get("value") or () if isinstance(i, Mapping)]
            if state.list_from is None:
                dates = [
                    d for d in (parse_graph_date(i.get("receivedDateTime")) for i in items) if d
                ]
                newest = max(dates, default=datetime.now(UTC))
                state.list_from = _iso(newest - LISTING_OVERLAP)
            next_link = response.get("@odata.nextLink")
            read = self._read(items, folder)
            if isinstance(next_link, str):
                state.list_next = links.advance(self.api.check_link(next_link))
                yield self._page(read)
                url = next_link
                continue
            # Listed: the delta round starts where the listing began.
            state.after, state.list, state.list_next, state.list_from = (
                state.list_from,
                False,
                None,
                None,
            )
            state.next = state.delta = None
            yield self._page(read)
            return

    # --- items → page --------------------------------------------------------------------

    def _page(self, read: _Read) -> Page:
        return Page(
            messages=tuple(read.messages),
            thread_dates=read.thread_dates,
            removed=tuple(read.removed),
            cursor=self.cursor.dumps(),
            listed=read.listed,
        )

    def _read(self, items: Sequence[Mapping[str, Any]], folder: str) -> _Read:
        full: dict[str, Mapping[str, Any]] = {}
        partial: list[str] = []
        removed: list[str] = []
        for item in items:
            item_id = item.get("id")
            if not isinstance(item_id, str) or not item_id:
                continue
            if "@removed" in item:
                full.pop(item_id, None)
                removed.append(item_id)
                continue
            self.present.put(item_id, folder)
            if is_partial(item, self.p.fields):
                partial.append(item_id)
            else:
                full[item_id] = item
        ids = list(dict.fromkeys([*full, *partial]))
        held = self.known.known_messages(ids) if ids else set()
        wanted = [
            item
            for item_id, item in full.items()
            if (item_id not in held and item_id not in self.emitted) or item_id in self.removed
        ]
        missing = [
            i
            for i in dict.fromkeys(partial)
            if i not in full and i not in held and i not in self.emitted
        ]
        wanted.extend(self._fetch(missing))
        messages = []
        for item in wanted:
            if item.get("isDraft"):
                continue  # not exchanged mail
            conversation = item.get("conversationId")
            message = message_from_graph(
                self.p.account,
                self.p._own,
                item,
                folder=folder,
                thread_key=conversation
                if isinstance(conversation, str) and conversation
                else str(item["id"]),
            )
            if self.since is None or message.date is None or message.date >= self.since:
                messages.append(message)
        gone = [i for i in dict.fromkeys(removed) if self.present.get(i, folder) == folder]
        for item_id in gone:
            self.removed.put(item_id, True)
        messages, dates = self._threads(messages)
        for message in messages:
            self.emitted.put(message.provider_id, True)
            self.removed.pop(message.provider_id, None)
        return _Read(messages, dates, gone, len(items))

    def _fetch(self, ids: Sequence[str]) -> list[Mapping[str, Any]]:
        """The full header set of messages a delta update named by their changes only."""
        if not ids:
            return []
        select = ",".join(self.p.fields)
        root = self.p.root
        parts = [Part(i, f"{root}/messages/{quote(i, safe='')}?$select={select}") for i in ids]
        answers = self.api.batch(parts, what="graph messages")
        return [answers[i] for i in ids if i in answers]

    def _threads(self, messages: list[Message]) -> tuple[list[Message], dict[str, datetime]]:
        """Thread keys (merged conversations) and the true first date of threads new here."""
        if not messages:
            return messages, {}
        conversations = list(dict.fromkeys(m.thread_key for m in messages))
        candidates = set(conversations) | {self.keys.key(c) for c in conversations}
        stored = self.known.thread_dates(candidates)
        new = {c for c in conversations if c not in stored and self.keys.key(c) == c}
        mapping = self.keys.assign(messages, new)
        messages = [
            m
            if mapping[m.thread_key] == m.thread_key
            else replace(m, thread_key=mapping[m.thread_key])
            for m in messages
        ]
        keys = set(mapping.values())
        dates = self.p._dates.cached(k for k in keys if k not in stored)
        missing = {k for k in keys if k not in stored and k not in dates}
        if missing:
            ask = [c for c, k in mapping.items() if k in missing] + sorted(missing - set(mapping))
            found = self.p._dates.look_up(ask)
            for key in missing:
                seen = [found[c] for c, k in mapping.items() if k == key and c in found]
                seen += [found[key]] if key in found else []
                seen += [m.date for m in messages if m.thread_key == key and m.date is not None]
                if seen:
                    dates[key] = min(seen)
            self.p._dates.remember({k: dates[k] for k in missing if k in dates})
        return messages, dates
