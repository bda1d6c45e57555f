"""Fetching the headers of new Gmail messages for one round, the cheapest way in quota.

A thread with several new messages, or whose first date is unknown, is read with one threads.get
(10 units: every message's headers and the thread's true first date); a single new message of a
thread whose first date is known with messages.get (5 units). A thread read once in a round is
kept in a small bounded cache, so that its older siblings listed on a later page cost nothing.
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from maillink.model import Message
from maillink.providers.gmail_api import Get, GmailApi
from maillink.providers.headers import message_from_headers

# Not exchanged mail (a draft) or not mail the user keeps (spam, trash): never emitted.
SKIPPED_LABELS = frozenset({"DRAFT", "SPAM", "TRASH"})


def internal_date(raw: Mapping[str, Any]) -> datetime | None:
    """Gmail's internalDate (epoch milliseconds, as a string) as a UTC datetime."""
    try:
        return datetime.fromtimestamp(int(raw["internalDate"]) / 1000, UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


def message_from_gmail(account: str, aliases: Iterable[str], raw: Mapping[str, Any]) -> Message:
    """A Gmail Message resource (format metadata) as a `model.Message`."""
    payload = _mapping(raw.get("payload"))
    headers = [
        (str(h.get("name", "")), str(h.get("value", "")))
        for h in _sequence(payload.get("headers"))
        if isinstance(h, dict)
    ]
    return message_from_headers(
        account,
        str(raw.get("id", "")),
        str(raw.get("threadId", "")),
        headers,
        internal_date=internal_date(raw),
        labels=tuple(str(label) for label in _sequence(raw.get("labelIds"))),
        snippet=html.unescape(str(raw.get("snippet", ""))),  # Gmail's snippet is HTML-escaped
        aliases=aliases,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is an object; a garbled answer's field reads as empty, never raises."""
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def skipped(message: Message) -> bool:
    return not SKIPPED_LABELS.isdisjoint(message.labels)


@dataclass
class _Thread:
    first_date: datetime | None
    siblings: dict[str, Message] = field(default_factory=dict)  # read, not emitted yet


@dataclass
class Fetched:
    """New messages in listed order (drafts, spam and trash left out), their threads' dates, and
    whether fetching stopped early because the page's newest messages were all older than the
    `older_than` asked for."""

    messages: list[Message]
    thread_dates: dict[str, datetime]
    all_older: bool = False


class RoundFetcher:
    """Reads new messages for one round of one mailbox. Memory is bounded by the cache limits."""

    def __init__(
        self,
        api: GmailApi,
        account: str,
        aliases: tuple[str, ...],
        *,
        batch_size: int,
        cache_threads: int = 10_000,
        cache_messages: int = 5_000,
        per_message: bool = False,
    ) -> None:
        self._api = api
        self._account = account
        self._aliases = aliases
        self._batch_size = batch_size
        self._cache: OrderedDict[str, _Thread] = OrderedDict()
        self._cache_threads = cache_threads
        self._cache_messages = cache_messages
        self._cached_messages = 0
        self._per_message = per_message  # the naive way: one messages.get each, no thread cache

    def fetch(
        self,
        wanted: Sequence[tuple[str, str]],
        known_dates: Mapping[str, datetime],
        *,
        older_than: datetime | None = None,
    ) -> Fetched:
        """The messages `wanted` ((message id, thread id), newest first) that still exist.

        With `older_than`, the calls go in listed order, batch by batch, and stop as soon as
        every message read so far is older: Gmail lists newest first, so the rest is older too.
        """
        by_thread: dict[str, list[str]] = {}
        for message_id, thread_id in wanted:
            by_thread.setdefault(thread_id, []).append(message_id)

        found: dict[str, Message] = {}
        dates: dict[str, datetime] = {}
        gets: list[Get] = []
        for thread_id, ids in by_thread.items():
            if self._per_message:
                gets.extend(Get("message", message_id) for message_id in ids)
                if thread_id in known_dates:
                    dates[thread_id] = known_dates[thread_id]
                continue
            cached = self._cache.get(thread_id)
            if cached is not None:
                self._cache.move_to_end(thread_id)
                for message_id in ids:
                    if message_id in cached.siblings:
                        found[message_id] = self._take(cached, message_id)
            missing = [message_id for message_id in ids if message_id not in found]
            first = (cached.first_date if cached else None) or known_dates.get(thread_id)
            if first is not None:
                dates[thread_id] = first
            if not missing:
                continue
            if first is not None and len(missing) == 1:
                gets.append(Get("message", missing[0]))
            else:
                gets.append(Get("thread", thread_id))

        wanted_ids = {message_id for message_id, _ in wanted}
        all_older = False
        for start in range(0, len(gets), self._batch_size):
            chunk = gets[start : start + self._batch_size]
            answers = self._api.get_many(chunk)
            for get in chunk:
                raw = answers.get(get)
                if raw is None:
                    continue  # deleted since it was listed
                if get.kind == "thread":
                    self._read_thread(raw, wanted_ids, found, dates)
                else:
                    message = message_from_gmail(self._account, self._aliases, raw)
                    found[message.provider_id] = message
                    self._note_date(dates, message.thread_key, message.date)
            if older_than is not None and self._all_older(found.values(), older_than):
                all_older = True
                break

        messages = [found[m] for m, _ in wanted if m in found and not skipped(found[m])]
        emitted_threads = {m.thread_key for m in messages}
        thread_dates = {t: d for t, d in dates.items() if t in emitted_threads}
        return Fetched(messages, thread_dates, all_older)

    @staticmethod
    def _all_older(messages: Iterable[Message], older_than: datetime) -> bool:
        dated = [m.date for m in messages if not skipped(m)]
        return bool(dated) and all(d is not None and d < older_than for d in dated)

    @staticmethod
    def _note_date(dates: dict[str, datetime], thread_id: str, date: datetime | None) -> None:
        if date is not None and (thread_id not in dates or date < dates[thread_id]):
            dates[thread_id] = date

    def _read_thread(
        self,
        raw: Mapping[str, Any],
        wanted_ids: set[str],
        found: dict[str, Message],
        dates: dict[str, datetime],
    ) -> None:
        thread_id = str(raw.get("id", ""))
        messages = [
            message_from_gmail(self._account, self._aliases, item)
            for item in _sequence(raw.get("messages"))
            if isinstance(item, dict)
        ]
        exchanged = [m.date for m in messages if m.date is not None and "DRAFT" not in m.labels]
        every = [m.date for m in messages if m.date is not None]
        first = min(exchanged or every, default=None)
        if first is not None:
            dates[thread_id] = first  # the thread's true start replaces any other guess
        entry = _Thread(first)
        for message in messages:
            if message.provider_id in wanted_ids:
                found[message.provider_id] = message
            elif not skipped(message):
                entry.siblings[message.provider_id] = message
        self._remember(thread_id, entry)

    def _take(self, entry: _Thread, message_id: str) -> Message:
        self._cached_messages -= 1
        return entry.siblings.pop(message_id)

    def _remember(self, thread_id: str, entry: _Thread) -> None:
        previous = self._cache.pop(thread_id, None)
        if previous is not None:
            self._cached_messages -= len(previous.siblings)
        self._cache[thread_id] = entry
        self._cached_messages += len(entry.siblings)
        while self._cache and (
            len(self._cache) > self._cache_threads or self._cached_messages > self._cache_messages
        ):
            _, evicted = self._cache.popitem(last=False)
            self._cached_messages -= len(evicted.siblings)
