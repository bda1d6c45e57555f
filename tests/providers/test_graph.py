"""The Graph adapter against the Microsoft sandbox: real HTTPS, the sandbox's throwaway CA."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from maillink.model import Direction, Message
from maillink.providers.base import NeedsReauth, Page, ProviderError
from maillink.providers.graph import GraphProvider
from maillink.providers.graph_api import MailboxGate
from maillink.providers.graph_cursor import GraphCursor
from maillink.providers.retry import RetryPolicy
from maillink.sandbox._server import Fault
from maillink.sandbox.microsoft import MicrosoftSandbox

REP = "rep@contoso.example"
CLIENT = "ana@client.example"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


class MemoryStore:
    """What the sync loop does with pages, in memory: commit messages, thread dates, cursor."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.dates: dict[str, datetime] = {}
        self.removed: set[str] = set()
        self.cursor: str | None = None
        self.emitted: Counter[str] = Counter()
        self.pages: list[Page] = []

    def known_messages(self, provider_ids: Iterable[str]) -> set[str]:
        return {i for i in provider_ids if i in self.messages}

    def thread_dates(self, thread_keys: Iterable[str]) -> dict[str, datetime]:
        return {k: self.dates[k] for k in thread_keys if k in self.dates}

    def commit(self, page: Page) -> None:
        self.pages.append(page)
        for message in page.messages:
            self.messages[message.provider_id] = message
            self.emitted[message.provider_id] += 1
            self.removed.discard(message.provider_id)
            dates = [d for d in (page.thread_dates.get(message.thread_key), message.date) if d]
            if message.thread_key in self.dates:
                dates.append(self.dates[message.thread_key])
            self.dates[message.thread_key] = min(dates)
        self.removed.update(page.removed)
        if page.cursor is not None:
            self.cursor = page.cursor

    def sync(self, provider: GraphProvider, **kwargs: Any) -> list[Page]:
        pages = []
        for page in provider.pull(self.cursor, self, **kwargs):
            self.commit(page)
            pages.append(page)
        return pages


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        time.sleep(min(seconds, 0.05))


@pytest.fixture
def ms() -> Iterator[MicrosoftSandbox]:
    with MicrosoftSandbox() as sandbox:
        sandbox.add_mailbox(REP, "Rep One")
        yield sandbox


def provider(ms: MicrosoftSandbox, **kwargs: Any) -> GraphProvider:
    token = ms.access_token(REP)
    options: dict[str, Any] = {
        "graph_url": ms.graph_url,
        "ca_bundle": ms.ca_bundle,
        "page_size": 100,
        "policy": RetryPolicy(sleep=Sleeps(), backoff=0.01),
    }
    options.update(kwargs)
    return GraphProvider(REP, lambda: token, **options)


def inbound(ms: MicrosoftSandbox, n: int, when: datetime, **kwargs: Any) -> str:
    return ms.add_message(
        REP,
        kwargs.pop("folder", "inbox"),
        internet_message_id=f"<in{n}@client.example>",
        subject=f"Quote {n}",
        sender=f"Ana Client <{CLIENT}>",
        to=[f"Rep One <{REP}>"],
        received=when,
        **kwargs,
    )


def outbound(ms: MicrosoftSandbox, n: int, when: datetime, **kwargs: Any) -> str:
    return ms.add_message(
        REP,
        "sentitems",
        internet_message_id=f"<out{n}@contoso.example>",
        subject=f"RE: Quote {n}",
        sender=f"Rep One <{REP}>",
        to=[CLIENT],
        received=when,
        **kwargs,
    )


def folder_state(cursor: str | None, folder: str) -> Any:
    parsed = GraphCursor.loads(cursor)
    assert parsed is not None
    return parsed.folders.get(folder)


# --- first sync, resume, incremental ----------------------------------------------------------


def test_first_sync_reads_both_folders_once_with_normalized_headers(ms: MicrosoftSandbox) -> None:
    conversation = "AAQkADconv-1="
    first = inbound(ms, 1, T0, conversation_id=conversation, cc=["Bob <BOB@Bücher.example>"])
    reply = outbound(ms, 1, T0 + timedelta(hours=1), conversation_id=conversation)
    store = MemoryStore()

    store.sync(provider(ms))

    assert set(store.emitted) == {first, reply} and max(store.emitted.values()) == 1
    got = store.messages[first]
    assert got.message_id == "in1@client.example"  # angle brackets gone, as from Gmail
    assert got.sender is not None and got.sender.email == CLIENT and got.sender.name == "Ana Client"
    assert [a.email for a in got.cc] == ["bob@xn--bcher-kva.example"]  # IDN and case as headers.py
    assert got.direction is Direction.INBOUND and got.date == T0
    assert got.thread_key == conversation and got.snippet == "" and got.labels == ("inbox",)
    sent = store.messages[reply]
    assert sent.direction is Direction.OUTBOUND and sent.date == T0 + timedelta(hours=1)
    assert store.dates[conversation] == T0
    for folder in ("inbox", "sentitems"):
        assert folder_state(store.cursor, folder).delta.startswith(ms.graph_url)
    # Header fields only: the sandbox answers 403 to any request that could read a body.
    assert ms.meter.statuses[403] == 0 and ms.meter.requests["graph.delta"] == 2


def test_page_size_is_asked_with_prefer_and_ids_are_immutable(ms: MicrosoftSandbox) -> None:
    ids = [inbound(ms, n, T0 + timedelta(minutes=n)) for n in range(7)]
    store = MemoryStore()

    pages = store.sync(provider(ms, page_size=3, folders=("inbox",)))

    assert [len(p.messages) for p in pages] == [3, 3, 1]
    assert set(store.messages) == set(ids)  # the immutable ids, not the folder-bound ones


def test_next_round_brings_only_what_changed(ms: MicrosoftSandbox) -> None:
    for n in range(3):
        inbound(ms, n, T0 + timedelta(hours=n))
    store = MemoryStore()
    store.sync(provider(ms))
    later = inbound(ms, 9, T0 + timedelta(days=1))
    ms.meter.reset()

    pages = store.sync(provider(ms))

    assert [m.provider_id for p in pages for m in p.messages] == [later]
    assert ms.meter.requests["graph.delta"] == 2  # one page per folder


def test_a_stopped_round_resumes_and_its_delta_link_comes_with_its_last_page(
    ms: MicrosoftSandbox,
) -> None:
    ids = [inbound(ms, n, T0 + timedelta(minutes=n)) for n in range(5)]
    store = MemoryStore()
    pull = provider(ms, page_size=2, folders=("inbox",)).pull(None, store)
    store.commit(next(pull))
    pull.close()  # the daemon stopped after one page
    assert folder_state(store.cursor, "inbox").delta is None
    assert folder_state(store.cursor, "inbox").next is not None

    pages = store.sync(provider(ms, page_size=2, folders=("inbox",)))

    assert set(store.emitted) == set(ids) and max(store.emitted.values()) == 1
    assert [folder_state(p.cursor, "inbox").delta is not None for p in pages] == [False, True]


# --- backfill window ---------------------------------------------------------------------------


def test_backfill_since_filters_the_initial_rounds_at_graph(ms: MicrosoftSandbox) -> None:
    old = inbound(ms, 1, T0 - timedelta(days=30))
    new = inbound(ms, 2, T0 + timedelta(days=1))
    store = MemoryStore()

    pages = store.sync(provider(ms, folders=("inbox",)), since=T0)

    assert set(store.messages) == {new} and old not in store.messages
    assert sum(p.listed for p in pages) == 1  # Graph filtered: the old one was never listed


def test_a_window_over_the_filtered_delta_cap_is_listed_by_date() -> None:
    with MicrosoftSandbox(filtered_delta_cap=8) as ms:
        ms.add_mailbox(REP)
        _window_over_the_cap(ms)


def _window_over_the_cap(ms: MicrosoftSandbox) -> None:
    older = inbound(ms, 0, T0 - timedelta(days=90))
    window = [inbound(ms, n, T0 + timedelta(hours=n)) for n in range(1, 21)]  # the cap is 8
    store = MemoryStore()
    capped = provider(ms, page_size=5, folders=("inbox",), filtered_delta_cap=8)

    store.sync(capped, since=T0)

    assert set(store.messages) == set(window) and older not in store.messages
    assert max(store.emitted.values()) == 1
    assert ms.meter.requests["graph.messages"] >= 4  # the listing by date ran
    state = folder_state(store.cursor, "inbox")
    assert state.delta is not None and not state.list
    # The delta round that followed the listing tracks the folder from then on.
    arrived = inbound(ms, 99, T0 + timedelta(days=2))
    pages = store.sync(capped)
    assert [m.provider_id for p in pages for m in p.messages] == [arrived]


# --- resets, removals, updates, replays -------------------------------------------------------


@pytest.mark.parametrize("code", ["syncStateNotFound", "resyncRequired"])
def test_expired_delta_restarts_the_folder_without_duplicates(
    ms: MicrosoftSandbox, code: str
) -> None:
    ids = [inbound(ms, n, T0 + timedelta(hours=n)) for n in range(4)]
    store = MemoryStore()
    store.sync(provider(ms))
    old_delta = folder_state(store.cursor, "inbox").delta
    later = inbound(ms, 7, T0 + timedelta(days=1))
    ms.expire_delta(REP, "inbox", code=code)

    pages = store.sync(provider(ms))

    assert ms.meter.statuses[410] == 1
    assert [m.provider_id for p in pages for m in p.messages] == [later]
    assert set(store.emitted) == {*ids, later} and max(store.emitted.values()) == 1
    assert folder_state(store.cursor, "inbox").delta not in (None, old_delta)


def test_removed_means_left_the_folder(ms: MicrosoftSandbox) -> None:
    archived = inbound(ms, 1, T0)
    deleted = inbound(ms, 2, T0 + timedelta(hours=1))
    refiled = inbound(ms, 3, T0 + timedelta(hours=2))
    kept = inbound(ms, 4, T0 + timedelta(hours=3))
    store = MemoryStore()
    store.sync(provider(ms))
    ms.move_message(REP, archived, "archive")
    ms.delete_message(REP, deleted)
    ms.move_message(REP, refiled, "sentitems")  # to another tracked folder

    for folders in (("inbox", "sentitems"), ("sentitems", "inbox")):
        pages = store.sync(provider(ms, folders=folders))
        assert store.removed == {archived, deleted}
        assert kept in store.messages and max(store.emitted.values()) <= 2
        if folders[0] == "sentitems":
            assert all(refiled not in p.removed for p in pages)
        ms.move_message(REP, refiled, "inbox")
        ms.move_message(REP, refiled, "sentitems")


def test_partial_updates_never_blank_stored_headers(ms: MicrosoftSandbox) -> None:
    read_later = inbound(ms, 1, T0)
    forgotten = inbound(ms, 2, T0 + timedelta(hours=1))
    store = MemoryStore()
    store.sync(provider(ms))
    ms.update_message(REP, read_later, isRead=True)
    ms.update_message(REP, forgotten, categories=["Blue"])
    before = store.messages[read_later]
    del store.messages[forgotten]  # a message the store does not hold (e.g. a lost page)
    ms.meter.reset()

    pages = store.sync(provider(ms))

    emitted = [m for p in pages for m in p.messages]
    assert [m.provider_id for m in emitted] == [forgotten]  # fetched in full, not from the update
    full = emitted[0]
    assert full.sender is not None and full.subject == "Quote 2" and full.date is not None
    assert full.message_id == "in2@client.example"
    assert store.messages[read_later] == before  # the update of a stored message changes nothing
    assert ms.meter.requests["graph.batch.part"] == 1


def test_replayed_items_are_emitted_once(ms: MicrosoftSandbox) -> None:
    ids = [inbound(ms, n, T0 + timedelta(minutes=n)) for n in range(6)]
    store = MemoryStore()
    pull = provider(ms, page_size=2, folders=("inbox",)).pull(None, store)
    store.commit(next(pull))
    ms.replay_next_delta(REP, "inbox")  # the next page repeats the first page's items

    for page in pull:
        store.commit(page)

    assert set(store.emitted) == set(ids) and max(store.emitted.values()) == 1
    assert sum(p.listed for p in store.pages) == 8  # the replayed two were listed, not emitted


def test_a_cursor_that_is_not_ours_is_refused(ms: MicrosoftSandbox) -> None:
    with pytest.raises(ProviderError, match="not a Graph cursor"):
        list(provider(ms).pull('{"phase": "history", "history_id": "1"}', MemoryStore()))


# --- throttling, concurrency, hosts, grants -------------------------------------------------


def test_throttling_with_retry_after_pauses_the_whole_mailbox(ms: MicrosoftSandbox) -> None:
    for n in range(30):
        inbound(ms, n, T0 + timedelta(minutes=n), conversation_id=f"AAQkADc{n}=")
    throttle = json.dumps({"error": {"code": "TooManyRequests", "message": "Please retry."}})
    ms.faults.add(
        Fault(
            path=r"/messages/delta",
            status=429,
            headers={"Retry-After": "1"},
            body=throttle,
            after=1,
        )
    )
    store = MemoryStore()
    sleeps = Sleeps()

    store.sync(
        provider(
            ms, page_size=10, folders=("inbox",), policy=RetryPolicy(sleep=sleeps, backoff=0.01)
        )
    )

    assert len(store.messages) == 30 and ms.meter.statuses[429] == 1
    assert sleeps == [1.0]
    # The retry's own sleep is cut to 0.05 s here: the 1 s hole in the mailbox's requests is the
    # gate holding every request of the mailbox until Retry-After has passed.
    times = [t for t, _ in ms.request_log(REP)]
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.95


class SteppingClock:
    """A clock that moves on by `step` each time it is read (and not otherwise)."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now


def test_the_gate_holds_every_request_while_paused() -> None:
    clock = SteppingClock(0.1)  # read by the gate only: the pause is counted in its seconds
    gate = MailboxGate(4, clock=clock)
    gate.pause(0.3)
    started = clock.now
    waits: list[float] = []

    def request() -> None:
        with gate.slot():
            waits.append(clock.now - started)

    threads = [threading.Thread(target=request) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waits) == 3 and min(waits) >= 0.29


@pytest.mark.parametrize("limit", [4, 2])
def test_at_most_the_limit_of_requests_in_flight_on_a_mailbox(limit: int) -> None:
    with MicrosoftSandbox(latency=0.03) as ms:
        ms.add_mailbox(REP)
        for n in range(40):
            inbound(ms, n, T0 + timedelta(minutes=n), conversation_id=f"AAQkADc{n}=")
        store = MemoryStore()

        store.sync(
            provider(ms, folders=("inbox",), batch_size=1, lookup_group=1, max_concurrency=limit)
        )

        assert len(store.messages) == 40
        assert ms.meter.requests["graph.batch"] == 40  # 40 lookups, one per batch, sent in parallel
        assert 2 <= ms.max_concurrency(REP) <= limit
        assert ms.meter.requests["graph.throttled"] == 0


def test_a_next_link_to_another_host_is_refused_before_the_token_is_sent(
    ms: MicrosoftSandbox,
) -> None:
    hits: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    with http.server.HTTPServer(("127.0.0.1", 0), Recorder) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        elsewhere = f"http://127.0.0.1:{other.server_address[1]}/v1.0/me/messages/delta?x=1"
        body = json.dumps({"value": [], "@odata.nextLink": elsewhere})
        ms.faults.add(Fault(path=r"/messages/delta", status=200, body=body))
        try:
            with pytest.raises(ProviderError, match="refused to follow"):
                list(provider(ms, folders=("inbox",)).pull(None, MemoryStore()))
            stored = GraphCursor(folders={})
            stored.folder("inbox").delta = elsewhere
            with pytest.raises(ProviderError, match="refused to follow"):
                list(provider(ms, folders=("inbox",)).pull(stored.dumps(), MemoryStore()))
        finally:
            other.shutdown()
    assert hits == []


def test_an_access_token_refused_twice_needs_reauth(ms: MicrosoftSandbox) -> None:
    inbound(ms, 1, T0)
    graph = provider(ms)
    ms.expire_access_tokens(REP)

    with pytest.raises(NeedsReauth):
        list(graph.pull(None, MemoryStore()))


def test_a_token_source_that_needs_reauth_stops_the_pull(ms: MicrosoftSandbox) -> None:
    def revoked() -> str:
        raise NeedsReauth("invalid_grant")

    graph = GraphProvider(REP, revoked, graph_url=ms.graph_url, ca_bundle=ms.ca_bundle)
    with pytest.raises(NeedsReauth):
        list(graph.pull(None, MemoryStore()))


# --- threads ---------------------------------------------------------------------------------


def test_thread_first_date_is_the_conversations_earliest_message_in_the_mailbox(
    ms: MicrosoftSandbox,
) -> None:
    conversation = "AAQkADlong="
    started = inbound(
        ms, 1, T0 - timedelta(days=200), folder="archive", conversation_id=conversation
    )
    inbound(ms, 2, T0 - timedelta(days=100), folder="deleteditems", conversation_id=conversation)
    recent = inbound(ms, 3, T0 + timedelta(days=1), conversation_id=conversation)
    store = MemoryStore()

    pages = store.sync(provider(ms), since=T0)

    assert set(store.messages) == {recent} and started not in store.messages
    assert pages[0].thread_dates[conversation] == T0 - timedelta(days=200)


def test_merged_conversations_share_a_thread_through_in_reply_to(ms: MicrosoftSandbox) -> None:
    first = inbound(ms, 1, T0, conversation_id="AAQkADone=")
    split = ms.add_message(
        REP,
        "inbox",
        internet_message_id="<in2@client.example>",
        subject="Changed subject",
        sender=CLIENT,
        to=[REP],
        received=T0 + timedelta(hours=1),
        conversation_id="AAQkADtwo=",
        internet_message_headers=[("In-Reply-To", "<in1@client.example>")],
    )
    store = MemoryStore()

    store.sync(provider(ms, reply_headers=True, folders=("inbox",)))

    assert store.messages[split].in_reply_to == "in1@client.example"
    assert store.messages[split].thread_key == store.messages[first].thread_key == "AAQkADone="
    cursor = GraphCursor.loads(store.cursor)
    assert cursor is not None and cursor.aliases == {"AAQkADtwo=": "AAQkADone="}


def test_requests_per_message_of_a_backfill(
    ms: MicrosoftSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    expected: dict[str, datetime] = {}
    n = 0
    for thread in range(150):
        conversation = f"AAQkADt{thread}="
        start = T0 + timedelta(hours=thread)
        expected[conversation] = start
        for k in range(1 + thread % 5):  # threads of 1 to 5 messages, one in three answered
            n += 1
            when = start + timedelta(minutes=10 * k)
            if k % 3 == 1:
                outbound(ms, n, when, conversation_id=conversation)
            else:
                inbound(ms, n, when, conversation_id=conversation)
    ms.meter.reset()
    store = MemoryStore()

    store.sync(provider(ms), since=T0 - timedelta(days=1))

    per_message = ms.meter.requests["http"] / len(store.messages)
    with capsys.disabled():
        print(
            f"\nGraph backfill: {len(store.messages)} messages, {ms.meter.requests['http']} HTTP "
            f"requests ({ms.meter.requests['graph.delta']} delta pages, "
            f"{ms.meter.requests['graph.batch']} $batch of {ms.meter.requests['graph.batch.part']} "
            f"lookups): {per_message:.4f} requests per message"
        )
    assert len(store.messages) == n == 450
    assert store.dates == expected  # every thread's true first date
    assert per_message <= 0.03
