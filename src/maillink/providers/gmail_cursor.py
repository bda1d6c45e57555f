"""The Gmail cursor (where a sync resumes) and the page-token guard, apart from the streaming.

The cursor is an opaque JSON string that only the Gmail adapter reads:
- ``{"phase": "list", "history_id": H, "page_token": T}``: a first sync listing messages, to go
  on from page token T (None: from the newest message); H is the mailbox's historyId read
  before listing began, where the incremental phase will start.
- ``{"phase": "history", "history_id": H}``: incremental, history.list from H.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from maillink.providers.base import ProviderError

Phase = Literal["list", "history"]


@dataclass(frozen=True)
class GmailCursor:
    phase: Phase
    history_id: str
    page_token: str | None = None

    @classmethod
    def listing(cls, history_id: str, page_token: str | None = None) -> GmailCursor:
        return cls("list", history_id, page_token)

    @classmethod
    def history(cls, history_id: str) -> GmailCursor:
        return cls("history", history_id)

    def dumps(self) -> str:
        body: dict[str, str | None] = {"phase": self.phase, "history_id": self.history_id}
        if self.phase == "list":
            body["page_token"] = self.page_token
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | None) -> GmailCursor | None:
        """The cursor `text` stands for (None for None); ProviderError if it is not one of ours."""
        if text is None:
            return None
        try:
            body = json.loads(text)
            phase, history_id = body["phase"], str(body["history_id"])
            page_token = body.get("page_token")
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ProviderError(f"not a Gmail cursor: {text[:80]!r}") from None
        if phase not in ("list", "history") or not history_id.isdigit():
            raise ProviderError(f"not a Gmail cursor: {text[:80]!r}")
        if page_token is not None and not isinstance(page_token, str):
            raise ProviderError(f"not a Gmail cursor: {text[:80]!r}")
        return cls(phase, history_id, page_token if phase == "list" else None)


class PageTokens:
    """Page tokens met while following one listing: a token seen twice would loop, so it raises."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._seen: set[str] = set()

    def advance(self, token: str | None) -> str | None:
        """`token`, recorded; ProviderError if this listing already had it."""
        if token is None:
            return None
        if token in self._seen:
            raise ProviderError(f"{self._what}: the server repeated a page token; stopping")
        self._seen.add(token)
        return token
