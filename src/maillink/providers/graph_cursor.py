"""The Graph cursor (where a mailbox's sync resumes), apart from the streaming.

An opaque JSON string only the Graph adapter reads: per tracked folder,
- ``delta``: the deltaLink that starts the folder's next round. It is replaced only by the
  deltaLink of a finished round, carried by that round's last page, so it is stored in the same
  transaction as the last page of the round ("stored only after the round is committed");
- ``next``: the nextLink of the round in progress, so that a stopped round resumes;
- ``list``/``list_next``/``list_from``: the date-ordered listing that replaces a filtered initial
  round whose window holds more than Graph's filtered-delta cap;
- ``counting``/``seen``: the round in progress is a filtered initial one (it may hit the cap),
  and how many items it returned so far;
- ``after``: where the initial round after such a listing starts (its $filter).
Top level: ``since`` (the backfill's start, for rounds that must start over) and ``aliases``
(conversations merged into another thread through In-Reply-To / Message-ID).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from maillink.providers.base import ProviderError

VERSION = 1
MAX_ALIASES = 256


@dataclass
class FolderState:
    delta: str | None = None
    next: str | None = None
    list: bool = False
    list_next: str | None = None
    list_from: str | None = None
    seen: int = 0
    counting: bool = False
    after: str | None = None

    def restart(self) -> None:
        """Forget the round in progress and the stored deltaLink: the next round is initial."""
        self.delta = self.next = self.list_next = self.list_from = self.after = None
        self.list = self.counting = False
        self.seen = 0


@dataclass
class GraphCursor:
    since: str | None = None
    folders: dict[str, FolderState] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def folder(self, name: str) -> FolderState:
        return self.folders.setdefault(name, FolderState())

    def alias(self, conversation: str, thread_key: str) -> None:
        self.aliases.pop(conversation, None)
        self.aliases[conversation] = thread_key
        while len(self.aliases) > MAX_ALIASES:
            del self.aliases[next(iter(self.aliases))]

    def dumps(self) -> str:
        body: dict[str, Any] = {"v": VERSION, "since": self.since, "folders": {}}
        for name, state in self.folders.items():
            body["folders"][name] = {
                f.name: getattr(state, f.name)
                for f in fields(FolderState)
                if getattr(state, f.name) not in (None, False, 0)
            }
        if self.aliases:
            body["aliases"] = self.aliases
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | None) -> GraphCursor | None:
        """The cursor `text` stands for (None for None); ProviderError if it is not one of ours."""
        if text is None:
            return None
        try:
            body = json.loads(text)
            if body.get("v") != VERSION:
                raise ValueError("version")
            since = body.get("since")
            folders = {
                str(name): FolderState(**{k: v for k, v in state.items()})
                for name, state in (body.get("folders") or {}).items()
            }
            aliases = {str(k): str(v) for k, v in (body.get("aliases") or {}).items()}
        except (ValueError, TypeError, AttributeError):
            raise ProviderError(f"not a Graph cursor: {text[:80]!r}") from None
        if since is not None and not isinstance(since, str):
            raise ProviderError(f"not a Graph cursor: {text[:80]!r}")
        for state in folders.values():
            links = (state.delta, state.next, state.list_next, state.list_from, state.after)
            if any(v is not None and not isinstance(v, str) for v in links):
                raise ProviderError(f"not a Graph cursor: {text[:80]!r}")
        return cls(since, folders, aliases)


class Links:
    """Links met while following one round: a link seen twice would loop, so it raises."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._seen: set[str] = set()

    def advance(self, link: str | None) -> str | None:
        if link is None:
            return None
        if link in self._seen:
            raise ProviderError(f"{self._what}: Graph repeated a nextLink; stopping")
        self._seen.add(link)
        return link
