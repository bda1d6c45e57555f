"""The state of one sandbox Gmail mailbox: messages, threads, labels and history, kept indexed.

Every list the API pages through is kept sorted (messages by internal date, history by id), so a
page is found by bisection and costs the size of the page, whatever the size of the mailbox.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
HIDDEN_LABELS = frozenset({"SPAM", "TRASH"})

OrderKey = tuple[int, int, str]
"""Where a message sorts: (internal date in ms, creation sequence, message id)."""


class HistoryExpiredError(LookupError):
    """The start history id is older than the oldest history the mailbox keeps."""


@dataclass(slots=True)
class StoredMessage:
    id: str
    thread_id: str
    seq: int
    internal_ms: int
    headers: tuple[tuple[str, str], ...]
    label_ids: list[str]
    snippet: str
    size_estimate: int
    history_id: int = 0

    @property
    def key(self) -> OrderKey:
        return (self.internal_ms, self.seq, self.id)


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One change. `label_ids` are the message's labels after it; `changed` those added/removed."""

    id: int
    kind: str
    message_id: str
    thread_id: str
    label_ids: tuple[str, ...]
    changed: tuple[str, ...] = ()


class SortedKeys:
    """Keys in ascending order. Adding in order is O(1); out-of-order adds sort once, lazily."""

    def __init__(self) -> None:
        self._keys: list[OrderKey] = []
        self._sorted = True

    def add(self, key: OrderKey) -> None:
        if self._keys and key < self._keys[-1]:
            self._sorted = False
        self._keys.append(key)

    def remove(self, key: OrderKey) -> None:
        keys = self.view()
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            del keys[i]

    def view(self) -> list[OrderKey]:
        if not self._sorted:
            self._keys.sort()
            self._sorted = True
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)


class Mailbox:
    """One user's mail. Not thread-safe by itself: the sandbox holds its lock around every call."""

    def __init__(self, email: str, aliases: tuple[str, ...] = ()) -> None:
        self.email = email
        self.aliases = aliases
        self._rng = random.Random(email)
        self.history_id = self._rng.randint(100_000, 999_999)
        self.oldest_start = self.history_id
        self.messages: dict[str, StoredMessage] = {}
        self._order = SortedKeys()
        self._threads: dict[str, SortedKeys] = {}
        self._history: list[HistoryRecord] = []
        self._history_ids: list[int] = []
        self._label_counts: Counter[str] = Counter()

    @property
    def thread_count(self) -> int:
        return len(self._threads)

    def get(self, message_id: str) -> StoredMessage:
        try:
            return self.messages[message_id]
        except KeyError:
            raise KeyError(f"no message {message_id!r} in mailbox {self.email}") from None

    def add(
        self,
        message_id: str,
        seq: int,
        *,
        headers: Iterable[tuple[str, str]],
        internal_ms: int,
        thread_id: str | None,
        label_ids: Iterable[str],
        snippet: str,
        size_estimate: int,
    ) -> StoredMessage:
        if thread_id is None:
            thread_id = message_id
        elif thread_id not in self._threads:
            raise KeyError(f"no thread {thread_id!r} in mailbox {self.email}")
        message = StoredMessage(
            id=message_id,
            thread_id=thread_id,
            seq=seq,
            internal_ms=internal_ms,
            headers=tuple(headers),
            label_ids=list(dict.fromkeys(label_ids)),
            snippet=snippet,
            size_estimate=size_estimate,
        )
        self.messages[message_id] = message
        self._order.add(message.key)
        self._threads.setdefault(thread_id, SortedKeys()).add(message.key)
        self._label_counts.update(message.label_ids)
        self._record("messageAdded", message)
        return message

    def delete(self, message_id: str) -> None:
        message = self.get(message_id)
        del self.messages[message_id]
        self._order.remove(message.key)
        thread = self._threads[message.thread_id]
        thread.remove(message.key)
        if not thread:
            del self._threads[message.thread_id]
        self._label_counts.subtract(message.label_ids)
        self._record("messageDeleted", message)

    def add_labels(self, message_id: str, label_ids: Iterable[str]) -> None:
        message = self.get(message_id)
        added = [label for label in dict.fromkeys(label_ids) if label not in message.label_ids]
        if added:
            message.label_ids.extend(added)
            self._label_counts.update(added)
            self._record("labelAdded", message, added)

    def remove_labels(self, message_id: str, label_ids: Iterable[str]) -> None:
        message = self.get(message_id)
        removed = [label for label in dict.fromkeys(label_ids) if label in message.label_ids]
        if removed:
            message.label_ids[:] = [lb for lb in message.label_ids if lb not in removed]
            self._label_counts.subtract(removed)
            self._record("labelRemoved", message, removed)

    def expire_history(self) -> None:
        """Forget all history: any start id older than the current one is now too old."""
        self._history.clear()
        self._history_ids.clear()
        self.oldest_start = self.history_id

    def _record(self, kind: str, message: StoredMessage, changed: Sequence[str] = ()) -> None:
        self.history_id += 1 + int(self._rng.random() * 9)  # Gmail's ids grow with gaps
        record = HistoryRecord(
            self.history_id,
            kind,
            message.id,
            message.thread_id,
            tuple(message.label_ids),
            tuple(changed),
        )
        self._history.append(record)
        self._history_ids.append(record.id)
        message.history_id = record.id

    # --- reading -------------------------------------------------------------------------

    def list_page(
        self,
        label_ids: Sequence[str],
        include_spam_trash: bool,
        before: OrderKey | None,
        limit: int,
    ) -> tuple[list[StoredMessage], OrderKey | None]:
        """Up to `limit` messages older than `before`, newest first, and where the next page starts.

        Only scans the items it returns and the ones it skips, so paging a whole mailbox is O(n).
        """
        keys = self._order.view()
        i = len(keys) if before is None else bisect.bisect_left(keys, before)
        wanted = set(label_ids)
        hidden = set() if include_spam_trash else HIDDEN_LABELS - wanted
        page: list[StoredMessage] = []
        while i > 0:
            i -= 1
            message = self.messages[keys[i][2]]
            if wanted.issubset(message.label_ids) and hidden.isdisjoint(message.label_ids):
                if len(page) == limit:
                    return page, page[-1].key
                page.append(message)
        return page, None

    def estimate(self, label_ids: Sequence[str], include_spam_trash: bool) -> int:
        """An upper bound of what a listing would hold, as cheap as Gmail's resultSizeEstimate."""
        if label_ids:
            return min(max(self._label_counts[label], 0) for label in label_ids)
        hidden = 0 if include_spam_trash else sum(self._label_counts[lb] for lb in HIDDEN_LABELS)
        return max(len(self.messages) - hidden, 0)

    def thread(self, thread_id: str) -> list[StoredMessage]:
        """The thread's messages, oldest first."""
        keys = self._threads.get(thread_id)
        if keys is None:
            raise KeyError(f"no thread {thread_id!r} in mailbox {self.email}")
        return [self.messages[key[2]] for key in keys.view()]

    def history_page(
        self,
        start: int,
        types: Sequence[str],
        label_id: str | None,
        after: int | None,
        limit: int,
    ) -> tuple[list[HistoryRecord], int | None]:
        """History records after `start` (and after `after`, the previous page's last record)."""
        if start < self.oldest_start:
            raise HistoryExpiredError(start)
        wanted = set(types or HISTORY_TYPES)
        i = bisect.bisect_right(self._history_ids, start if after is None else max(start, after))
        page: list[HistoryRecord] = []
        history = self._history
        while i < len(history):
            record = history[i]
            i += 1
            if record.kind not in wanted:
                continue
            if label_id is not None and label_id not in record.label_ids + record.changed:
                continue
            if len(page) == limit:
                return page, page[-1].id
            page.append(record)
        return page, None
