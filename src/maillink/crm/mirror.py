"""A CRM with a local mirror of its persons and items (docs/crm-writes.md, "The mirror").

When the CRM is small enough to list (`max_records` persons, deals and leads together), maillink
keeps its persons (with their addresses) and items in the store and answers `search_persons` and
`items_of_person` from there: a new address of a person it knows costs no CRM read (an address it
does not know is searched, as without the mirror: the person may be newer than the mirror, and
so may the items of a person it does not know). The mirror is filled by one full
listing, then kept by listing what changed since (`refresh`: the daemon's CRM poll, the start of
`backfill` and `sync --once`, and a read that finds it older than `max_age`); webhooks mark what
they name as stale, and the CRM is asked about those until a refresh has read them. A mirror that
is not complete, too big, stale or suspect is not used: reads go to the adapter, as without it.
Writes always go to the adapter.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from maillink.crm.base import CRM, ActivityDraft, Changes, CRMError, Listing, MirrorSource
from maillink.model import CrmUser, Item, ItemKind, Person

log = logging.getLogger(__name__)


EMPTY, COMPLETE, TOO_BIG = "empty", "complete", "too_big"


@dataclass(frozen=True)
class MirrorState:
    """`status`: EMPTY (never filled), COMPLETE (usable) or TOO_BIG (the CRM holds more than the
    limit: not used). `mark`: list changes since this time next. `refreshed_at`: the start of the
    last refresh; `full_at`: of the last full listing. `needs_full`: something the listings cannot
    show went wrong (a person gone): not used until a full listing. `token`: who wrote it."""

    status: str = EMPTY
    mark: datetime | None = None
    refreshed_at: datetime | None = None
    full_at: datetime | None = None
    records: int = 0
    needs_full: bool = False
    token: str = ""

    def to_text(self) -> str:
        data: dict[str, Any] = asdict(self)
        for name in ("mark", "refreshed_at", "full_at"):
            value = data[name]
            data[name] = value.isoformat() if value is not None else None
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_text(cls, text: str | None) -> MirrorState:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            times = {
                name: datetime.fromisoformat(data[name]) if data.get(name) else None
                for name in ("mark", "refreshed_at", "full_at")
            }
            return cls(
                status=str(data.get("status") or EMPTY),
                records=int(data.get("records") or 0),
                needs_full=bool(data.get("needs_full")),
                token=str(data.get("token") or ""),
                **times,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()  # unreadable: as if never filled (the next refresh lists everything)


class MirrorRows(Protocol):
    """Where the mirror is kept (`maillink.store.mirror.MirrorTables`)."""

    def state(self) -> str | None: ...

    def swap(self, old: str | None, new: str) -> bool: ...

    def persons(self, email: str) -> list[Person] | None: ...

    def items(self, person_id: int) -> list[Item] | None: ...

    def add_person(self, person: Person) -> None: ...

    def write(
        self,
        old: str | None,
        new: str,
        changes: Any,
        started: datetime,
        deleted_before: datetime,
    ) -> tuple[set[str], set[int]] | None: ...


@dataclass(frozen=True)
class ListedChanges:
    """A listing as the rows take it (`maillink.store.mirror.MirrorChanges`)."""

    full: bool
    persons: tuple[Person, ...]
    items: tuple[Item, ...]
    gone: tuple[Item, ...]
    whole: frozenset[ItemKind]

    @classmethod
    def of(cls, listing: Listing) -> ListedChanges:
        return cls(
            listing.since is None, listing.persons, listing.items, listing.gone, listing.whole
        )


STATE_KEPT = timedelta(seconds=2)  # how long a read state answers the next reads (`_state`)
OVERLAP = timedelta(minutes=1)  # listings overlap: the CRM's clock and ours differ a little
DELETED_KEPT = timedelta(days=30)  # the CRM lists deleted deals that long


class MirrorableCRM(CRM, MirrorSource, Protocol):
    """An adapter that can be mirrored."""


@dataclass(frozen=True)
class Refreshed:
    """What one `refresh` did: `listed` (None: skipped, another refresh was recent or ran at the
    same moment), whether it was `full`, and the `changes` it read."""

    listed: int | None
    full: bool = False
    changes: Changes | None = None


class MirroredCRM:
    """`adapter` behind a mirror kept in `rows` (see the module's docstring).

    `max_age`: a mirror refreshed longer ago is refreshed (incrementally) before it answers.
    `min_interval`: a refresh asked sooner after the last one (by any process) does nothing.
    `full_every`: how often everything is listed again (persons deleted in the CRM leave the
    mirror then, or through their webhook), and how often a CRM found too big is counted again.
    """

    def __init__(
        self,
        adapter: MirrorableCRM,
        rows: MirrorRows,
        *,
        max_records: int,
        max_age: timedelta = timedelta(minutes=10),
        min_interval: timedelta = timedelta(0),
        full_every: timedelta = timedelta(hours=24),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.adapter = adapter
        self.rows = rows
        self.max_records = max_records
        self.max_age = max_age
        self.min_interval = min_interval
        self.full_every = full_every
        self._now = now
        self._lock = threading.Lock()
        self._read: tuple[datetime, MirrorState] | None = None  # the state `_state` last read
        self.answered = 0  # reads the mirror answered (the adapter was not asked)

    # -- what the daemon's metrics and the bench look at ----------------------------------------
    @property
    def http(self) -> object:
        return getattr(self.adapter, "http", None)

    @property
    def tokens_spent(self) -> int:
        return int(getattr(self.adapter, "tokens_spent", 0))

    @property
    def requests_made(self) -> int:
        return int(getattr(self.adapter, "requests_made", 0))

    # -- reads ------------------------------------------------------------------------------
    def search_persons(self, email: str) -> list[Person]:
        """The mirror's persons for this address; the CRM's search when the mirror knows none
        (the person may be newer than the last refresh) or cannot answer."""
        wanted = email.strip().lower()
        if wanted and self._usable():
            found = self.rows.persons(wanted)
            if found:
                self.answered += 1
                return found
        return self.adapter.search_persons(email)

    def items_of_person(self, person_id: int) -> list[Item]:
        """From the mirror when it knows the person and no change marked it; else the CRM's."""
        if self._usable():
            found = self.rows.items(person_id)
            if found is not None:
                self.answered += 1
                return found + self.adapter.unmirrored_items(person_id)
        return self.adapter.items_of_person(person_id)

    def archived_items_of_person(self, person_id: int) -> list[Item]:
        return self.adapter.archived_items_of_person(person_id)

    def users(self) -> list[CrmUser]:
        return self.adapter.users()

    def _usable(self) -> bool:
        """Complete, not suspect, and refreshed within `max_age` (refreshed now if it is not,
        unless that needs a full listing: a round never waits for one)."""
        if self.max_records <= 0:
            return False
        state = self._state()
        if state.status != COMPLETE or state.needs_full:
            return False
        if state.refreshed_at is not None and self._now() - state.refreshed_at <= self.max_age:
            return True
        if self._full_due(state):
            return False
        try:
            self.refresh()
        except CRMError as exc:
            log.warning("CRM mirror refresh failed, asking the CRM instead: %s", exc)
            return False
        state = self._state()
        return state.status == COMPLETE and not state.needs_full

    def _state(self) -> MirrorState:
        """The mirror's state, read from the store at most once every `STATE_KEPT` (every read of
        a round asks for it). A state that old is safe to answer from: what a webhook changed
        is still seen at once, for the stale rows are read with every lookup (`rows.persons`,
        `rows.items`); this process's own refresh and `forget_cached` drop it at once; only
        another process's refresh or `forget_cached` is seen up to `STATE_KEPT` late, as if
        the read had come that much sooner (its rows are consistent with it then)."""
        now = self._now()
        read = self._read
        if read is not None and timedelta(0) <= now - read[0] < STATE_KEPT:
            return read[1]
        state = MirrorState.from_text(self.rows.state())
        self._read = (now, state)
        return state

    def _full_due(self, state: MirrorState) -> bool:
        """A full listing is due: never filled, suspect, or the last one is `full_every` old (a
        CRM found too big is counted again only then)."""
        last = state.full_at
        aged = last is None or self._now() - last >= self.full_every
        if state.status == TOO_BIG:
            return aged
        return state.status != COMPLETE or state.needs_full or state.mark is None or aged

    # -- keeping it --------------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> Refreshed:
        """List what changed since the last refresh (everything when a full listing is due) and
        write it, with the caches it makes stale, in one transaction; nothing when another
        refresh ran less than `min_interval` ago (unless `force`) or commits first."""
        if self.max_records <= 0:
            return Refreshed(listed=None)
        with self._lock:
            try:
                return self._refresh(force)
            finally:
                self._read = None  # what it wrote, or what a refresh that won wrote

    def _refresh(self, force: bool) -> Refreshed:
        started = self._now()
        text = self.rows.state()
        state = MirrorState.from_text(text)
        recent = state.refreshed_at is not None and started - state.refreshed_at < self.min_interval
        full = self._full_due(state)
        if state.status == TOO_BIG and not full:
            return Refreshed(listed=None)
        if recent and not force and not state.needs_full:
            return Refreshed(listed=None)
        since = None if full else state.mark
        listing = self.adapter.list_records(since, self.max_records)
        return self._write(text, state, listing, started)

    def _write(
        self, text: str | None, state: MirrorState, listing: Listing, started: datetime
    ) -> Refreshed:
        full = listing.since is None
        mark = started - OVERLAP
        if state.mark is not None and not full:
            mark = max(mark, state.mark)
        token = secrets.token_hex(6)
        if not listing.complete:
            new = MirrorState(status=TOO_BIG, refreshed_at=started, full_at=started, token=token)
        else:
            new = MirrorState(
                token=token,
                status=COMPLETE,
                mark=mark,
                refreshed_at=started,
                full_at=started if full else state.full_at,
                records=listing.records if full else state.records,
            )
        changes = ListedChanges.of(listing) if listing.complete else None
        written = self.rows.write(text, new.to_text(), changes, started, started - DELETED_KEPT)
        if written is None:
            return Refreshed(listed=None)  # another refresh committed first: its rows stand
        if changes is None:
            log.info(
                "the CRM holds more than %d persons, deals and leads: not mirrored, "
                "new addresses are searched",
                self.max_records,
            )
            return Refreshed(listed=listing.records, full=True)
        emails, person_ids = written
        found = Changes(person_ids=frozenset(person_ids), emails=frozenset(emails), until=mark)
        return Refreshed(listed=listing.records, full=full, changes=found)

    def changes_since(self, since: datetime) -> Changes:
        """The mirror's refresh is the poll: its listing says what changed (and the caches it
        made stale are forgotten with it). Without a mirror in use, the adapter's poll."""
        done = self.refresh()
        if done.listed is None:
            state = MirrorState.from_text(self.rows.state())
            if state.status == COMPLETE and not state.needs_full:
                # Refreshed a moment ago by another process, which forgot what it changed.
                return Changes(frozenset(), frozenset(), until=since)
            return self.adapter.changes_since(since)
        if done.changes is None:  # found too big just now
            return self.adapter.changes_since(since)
        # After a full listing every cache was forgotten already.
        return replace(done.changes, until=max(since, done.changes.until))

    def forget_cached(self) -> None:
        """A write named a person or item the CRM no longer has: what the listings cannot show
        (a deleted person) may be in the mirror, so it is not used until listed whole again."""
        self.adapter.forget_cached()
        self._read = None
        for _ in range(3):  # a refresh may move the state between the read and the swap
            text = self.rows.state()
            state = MirrorState.from_text(text)
            if text is None or state.needs_full:
                return
            if self.rows.swap(text, replace(state, needs_full=True).to_text()):
                self._read = None  # set aside from now on
                return

    # -- writes: the adapter's --------------------------------------------------------------
    def create_person(self, name: str, email: str) -> Person:
        """The CRM's person for this address if it has one now (the mirror may not know it yet),
        else a new one; the mirror learns it at once."""
        found = self.adapter.search_persons(email)
        person = found[0] if found else self.adapter.create_person(name, email)
        self.rows.add_person(person)
        return person

    def create_activity(self, draft: ActivityDraft) -> str:
        return self.adapter.create_activity(draft)

    def update_activity(self, activity_id: str, draft: ActivityDraft) -> None:
        self.adapter.update_activity(activity_id, draft)

    def find_activity(self, key: str, person_id: int | None) -> str | None:
        return self.adapter.find_activity(key, person_id)
