"""Threads of a Graph mailbox: their keys (conversationId, merged through Message-IDs) and their
true first dates (rule 2 needs when the thread started at the provider, not when we saw it).

First dates: a conversation the store already dates costs nothing, nor one dated earlier in
this pull; the others are looked up in the whole mailbox (every folder, Deleted Items too), a
group of conversations per request —
    GET /me/messages?$filter=conversationId eq 'a' or conversationId eq 'b' …
        &$select=conversationId,receivedDateTime,sentDateTime,isDraft,from&$top=1000
— and the earliest non-draft message of each is its start, dated as `message_from_graph` dates
messages (sent for outbound, received for inbound). No $orderby: Graph refuses an $orderby on
a property that does not lead the $filter (InefficientFilter), and the minimum is cheap here.
The lookups of a page go out in $batch requests of up to 20 groups.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from maillink.model import Message
from maillink.providers.graph_api import GraphApi, Part
from maillink.providers.graph_cursor import GraphCursor
from maillink.providers.graph_messages import DATE_FIELDS, exchange_date, sender_is_own


class _Bounded(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries past `limit` (memory stays bounded in a backfill)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: Any) -> None:
        self.pop(key, None)
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)


class ThreadDates:
    """The first date of each conversation, exact, at the lowest request cost."""

    def __init__(
        self,
        api: GraphApi,
        own: frozenset[str],
        *,
        group: int = 15,
        cache: int = 50_000,
        root: str = "/me",
    ) -> None:
        self._api = api
        self._root = root  # the mailbox on Graph: /me, or /users/{id} for an app token
        self._own = own
        self._group = group
        self._dates: _Bounded = _Bounded(cache)
        self.lookups = 0  # conversations looked up

    def remember(self, dates: Mapping[str, datetime]) -> None:
        for key, date in dates.items():
            self._dates.put(key, date)

    def cached(self, keys: Iterable[str]) -> dict[str, datetime]:
        return {k: self._dates[k] for k in keys if k in self._dates}

    def look_up(self, conversations: Sequence[str]) -> dict[str, datetime]:
        """The earliest non-draft message date of each conversation (absent: none found)."""
        wanted = list(dict.fromkeys(conversations))
        if not wanted:
            return {}
        self.lookups += len(wanted)
        groups = [wanted[i : i + self._group] for i in range(0, len(wanted), self._group)]
        parts = [Part(str(index), self._url(group)) for index, group in enumerate(groups)]
        answers = self._api.batch(parts, what="graph conversation dates")
        found: dict[str, datetime] = {}
        for part in parts:
            body = answers.get(part.key)
            while body is not None:
                self._read(body.get("value"), found)
                link = body.get("@odata.nextLink")
                body = self._api.get(link, what="graph conversation dates") if link else None
        for conversation, date in found.items():
            self._dates.put(conversation, date)
        return found

    def _url(self, group: Sequence[str]) -> str:
        clause = " or ".join(
            f"conversationId eq '{c.replace(chr(39), chr(39) * 2)}'" for c in group
        )
        query = urlencode(
            {"$filter": clause, "$select": ",".join(DATE_FIELDS), "$top": "1000"},
            quote_via=quote,
            safe="$,",
        )
        return f"{self._root}/messages?{query}"

    def _read(self, rows: Any, found: dict[str, datetime]) -> None:
        for row in rows or ():
            if not isinstance(row, Mapping) or row.get("isDraft"):
                continue
            conversation = row.get("conversationId")
            date = exchange_date(row, sender_is_own(row, self._own))
            if not isinstance(conversation, str) or date is None:
                continue
            if conversation not in found or date < found[conversation]:
                found[conversation] = date


class ThreadKeys:
    """Thread keys: the conversationId, unless the conversation is new and one of its messages
    answers (In-Reply-To, References) or repeats (same Message-ID) a message already seen in
    this pull under another thread — Exchange splits a thread on a changed subject, or when a
    non-Outlook client's reply does not correlate; the merge is remembered in the cursor."""

    def __init__(self, cursor: GraphCursor, *, remember: int = 20_000) -> None:
        self._cursor = cursor
        self._by_message_id: _Bounded = _Bounded(remember)

    def key(self, conversation: str) -> str:
        return self._cursor.aliases.get(conversation, conversation)

    def assign(self, messages: Sequence[Message], new_keys: set[str]) -> dict[str, str]:
        """conversation → thread key for `messages`; merges only conversations in `new_keys`."""
        keys: dict[str, str] = {}
        for message in messages:
            conversation = message.thread_key
            if conversation not in keys:
                key = self.key(conversation)
                if conversation in new_keys and key == conversation:
                    for ref in _refs(message):
                        other = self._by_message_id.get(ref)
                        if other is not None and other != conversation:
                            key = other
                            self._cursor.alias(conversation, other)
                            break
                keys[conversation] = key
            if message.message_id:
                self._by_message_id.put(message.message_id, keys[conversation])
        return keys


def _refs(message: Message) -> list[str]:
    refs = [message.message_id] if message.message_id else []
    if message.in_reply_to:
        refs.append(message.in_reply_to)
    refs.extend(reversed(message.references))
    return refs
