"""The Gmail adapter against the Google sandbox: real HTTP, the real google-api-python-client."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from google.oauth2.credentials import Credentials

from maillink.model import Direction, Message
from maillink.providers.base import NeedsReauth, Page, ProviderError
from maillink.providers.gmail import GmailProvider
from maillink.providers.gmail_api import SCOPE_METADATA, check_endpoint
from maillink.providers.gmail_cursor import GmailCursor
from maillink.providers.retry import RetryPolicy
from maillink.sandbox._server import Fault
from maillink.sandbox.google import GoogleSandbox

REP = "rep@acme.example"
START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


class MemoryStore:
    """What the sync loop does with pages, in memory: commit messages, thread dates, cursor."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.dates: dict[str, datetime] = {}
        self.removed: list[str] = []
        self.cursor: str | None = None
        self.emitted: Counter[str] = Counter()

    def known_messages(self, provider_ids: Iterable[str]) -> set[str]:
        return {i for i in provider_ids if i in self.messages}

    def thread_dates(self, thread_keys: Iterable[str]) -> dict[str, datetime]:
        return {k: self.dates[k] for k in thread_keys if k in self.dates}

    def commit(self, page: Page) -> None:
        for message in page.messages:
            self.messages[message.provider_id] = message
            self.emitted[message.provider_id] += 1
        for key, date in page.thread_dates.items():
            self.dates[key] = min(date, self.dates.get(key, date))
        self.removed.extend(page.removed)
        if page.cursor is not None:
            self.cursor = page.cursor

    def sync(self, provider: GmailProvider, **kwargs: object) -> list[Page]:
        pages = []
        for page in provider.pull(self.cursor, self, **kwargs):  # type: ignore[arg-type]
            self.commit(page)
            pages.append(page)
        return pages


class Mail:
    """A sandbox mailbox with threads, remembering what it holds."""

    def __init__(self, google: GoogleSandbox, email: str = REP) -> None:
        self.google = google
        self.email = email
        google.add_mailbox(email)
        self.dates: dict[str, datetime] = {}  # message id → internal date
        self.threads: dict[str, list[str]] = {}
        self._n = 0

    def thread(self, size: int, start: datetime, *, sent_every: int = 0) -> str:
        thread_id: str | None = None
        for k in range(size):
            self._n += 1
            outbound = bool(sent_every) and k % sent_every == 1
            sender, to = (
                (self.email, "ana@client.example")
                if outbound
                else ("ana@client.example", self.email)
            )
            when = start + timedelta(hours=k)
            message_id = self.google.add_message(
                self.email,
                headers=[
                    ("From", f"Ana <{sender}>"),
                    ("To", to),
                    ("Subject", f"Quote {self._n}"),
                    ("Date", when.strftime("%a, %d %b %Y %H:%M:%S +0000")),
                    ("Message-ID", f"<m{self._n}@mail.example>"),
                ],
                internal_date=when,
                thread_id=thread_id,
                label_ids=("SENT",) if outbound else ("INBOX",),
                snippet="Hello &amp; welcome",
            )
            thread_id = thread_id or message_id
            self.dates[message_id] = when
            self.threads.setdefault(thread_id, []).append(message_id)
        assert thread_id is not None
        return thread_id

    def first_dates(self) -> dict[str, datetime]:
        return {t: min(self.dates[m] for m in ids) for t, ids in self.threads.items()}

    def credentials(self) -> Credentials:
        return Credentials(
            None,
            refresh_token=self.google.issue_refresh_token(self.email),
            token_uri=self.google.token_uri,
            client_id=self.google.client_id,
            client_secret=self.google.client_secret,
            scopes=[SCOPE_METADATA],
        )


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def mail(google: GoogleSandbox) -> Mail:
    return Mail(google)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def provider(mail: Mail, sleeps: Sleeps | None = None, **kwargs: object) -> GmailProvider:
    policy = RetryPolicy(sleep=sleeps if sleeps is not None else Sleeps())
    return GmailProvider(
        mail.email,
        mail.credentials(),
        api_endpoint=mail.google.api_endpoint,
        policy=policy,
        **kwargs,  # type: ignore[arg-type]
    )


def seed(mail: Mail, sizes: Iterable[int], *, sent_every: int = 0) -> None:
    for i, size in enumerate(sizes):
        mail.thread(size, START + timedelta(days=i), sent_every=sent_every)


# --- first sync ------------------------------------------------------------------------------


def test_first_sync_emits_every_message_once_with_the_true_thread_dates(mail: Mail) -> None:
    seed(mail, [3, 1, 5, 2, 4, 1, 3, 6, 2], sent_every=2)
    store = MemoryStore()
    gmail = provider(mail, page_size=7, batch_size=3)

    pages = store.sync(gmail)

    assert set(store.emitted) == set(mail.dates)
    assert max(store.emitted.values()) == 1
    assert store.dates == mail.first_dates()
    assert [GmailCursor.loads(p.cursor).phase for p in pages] == ["list"] * 3 + ["history"]  # type: ignore[union-attr]
    assert sum(p.listed for p in pages) == len(mail.dates)
    # every thread read once, even those whose messages straddle list pages
    assert mail.google.meter.requests["gmail.threads.get"] == len(mail.threads)
    assert mail.google.meter.requests["gmail.messages.get"] == 0
    message = next(iter(store.messages.values()))
    assert message.account == REP
    assert message.snippet == "Hello & welcome"
    assert message.message_id is not None and message.message_id.endswith("@mail.example")
    directions = Counter(m.direction for m in store.messages.values())
    assert directions[Direction.OUTBOUND] > 0 and directions[Direction.INBOUND] > 0
    for m in store.messages.values():
        assert (m.direction is Direction.OUTBOUND) == ("SENT" in m.labels)
        assert m.date == mail.dates[m.provider_id]


def test_a_list_page_cursor_resumes_where_it_stopped(mail: Mail) -> None:
    seed(mail, [3] * 10)
    store = MemoryStore()
    first = next(provider(mail, page_size=12).pull(None, store))
    store.commit(first)  # the run stops here (crash, SIGTERM) after committing one page
    assert GmailCursor.loads(store.cursor).page_token  # type: ignore[union-attr]
    lists_before = mail.google.meter.requests["gmail.messages.list"]

    store.sync(provider(mail, page_size=12))

    assert set(store.emitted) == set(mail.dates)
    assert max(store.emitted.values()) == 1
    assert mail.google.meter.requests["gmail.users.getProfile"] == 1  # not read again
    assert mail.google.meter.requests["gmail.messages.list"] - lists_before == 2  # pages 2, 3
    assert store.dates == mail.first_dates()


def test_a_refused_page_token_restarts_the_listing(mail: Mail) -> None:
    seed(mail, [2] * 5)
    store = MemoryStore()
    history_id = str(mail.google.history_id(REP))
    store.cursor = GmailCursor.listing(history_id, "no-longer-valid").dumps()

    store.sync(provider(mail, page_size=4))

    assert set(store.emitted) == set(mail.dates)
    assert store.cursor == GmailCursor.history(history_id).dumps()


def test_since_stops_the_listing_at_the_first_older_page(mail: Mail) -> None:
    seed(mail, [2] * 60)  # one thread a day, for 60 days
    since = START + timedelta(days=50)
    store = MemoryStore()

    pages = store.sync(provider(mail, page_size=10, batch_size=5), since=since)

    expected = {m for m, d in mail.dates.items() if d >= since}
    assert set(store.emitted) == expected
    assert all(m.date is not None and m.date >= since for m in store.messages.values())
    assert GmailCursor.loads(pages[-1].cursor).phase == "history"  # type: ignore[union-attr]
    assert mail.google.meter.requests["gmail.messages.list"] == 3  # not the 12 pages
    assert mail.google.meter.requests["gmail.threads.get"] <= len(expected) // 2 + 10


# --- incremental -----------------------------------------------------------------------------


def test_history_round_emits_new_messages_and_removals_with_the_cursor_on_its_last_page(
    mail: Mail,
) -> None:
    seed(mail, [3, 2, 4])
    store = MemoryStore()
    store.sync(provider(mail))
    old_threads = list(mail.threads)
    deleted = [mail.threads[old_threads[0]][1], mail.threads[old_threads[2]][3]]
    before = set(mail.dates)

    for thread_id in old_threads:  # a reply in each known thread
        mail.google.add_message(
            REP,
            headers=[
                ("From", "ana@client.example"),
                ("Subject", "Re"),
                ("Message-ID", f"<r-{thread_id}@x>"),
            ],
            internal_date=START + timedelta(days=30),
            thread_id=thread_id,
        )
    seed_start = len(mail.threads)
    for i in range(4):  # new threads
        mail.thread(2, START + timedelta(days=40 + i))
    for message_id in deleted:
        mail.google.delete_message(REP, message_id)
    mail.google.meter.reset()

    gmail = provider(mail, page_size=5)
    pages = store.sync(gmail)

    assert len(pages) >= 3
    assert all(p.cursor is None for p in pages[:-1])
    assert pages[-1].cursor == GmailCursor.history(str(mail.google.history_id(REP))).dumps()
    new = {m for p in pages for m in (x.provider_id for x in p.messages)}
    assert len(new) == len(old_threads) + 8
    assert not new & before
    assert max(store.emitted.values()) == 1
    assert sorted(store.removed) == sorted(deleted)
    # replies in known threads keep the thread's true first date; new threads get theirs
    assert store.dates == {
        t: d
        for t, d in mail.first_dates().items()
        if t in old_threads or t in list(mail.threads)[seed_start:]
    }
    # a single reply in a thread whose date is known costs a messages.get, not a threads.get
    assert mail.google.meter.requests["gmail.messages.get"] == len(old_threads)
    assert mail.google.meter.requests["gmail.threads.get"] == 4


def test_naive_thread_dates_from_the_store_are_taken_as_utc(mail: Mail) -> None:
    class NaiveStore(MemoryStore):
        def thread_dates(self, thread_keys: Iterable[str]) -> dict[str, datetime]:
            dates = super().thread_dates(thread_keys)
            return {k: d.replace(tzinfo=None) for k, d in dates.items()}

    thread = mail.thread(2, START)
    store = NaiveStore()
    store.sync(provider(mail))
    reply = mail.google.add_message(
        REP,
        headers=[("From", "ana@client.example")],
        internal_date=START + timedelta(days=2),
        thread_id=thread,
    )

    pages = store.sync(provider(mail))

    assert [m.provider_id for p in pages for m in p.messages] == [reply]
    assert pages[-1].thread_dates == {thread: START}


def test_an_idle_history_round_is_one_cheap_page(mail: Mail) -> None:
    seed(mail, [2])
    store = MemoryStore()
    store.sync(provider(mail))
    gmail = provider(mail)

    pages = store.sync(gmail)

    assert len(pages) == 1 and pages[0].messages == ()
    assert pages[0].cursor is not None
    assert gmail.quota_units == 2  # one history.list


def test_drafts_are_not_emitted_until_sent(mail: Mail) -> None:
    seed(mail, [1])
    store = MemoryStore()
    store.sync(provider(mail))
    draft = mail.google.add_message(
        REP,
        headers=[("From", REP), ("To", "ana@client.example"), ("Subject", "Draft")],
        internal_date=START + timedelta(days=3),
        label_ids=("DRAFT",),
    )
    assert store.sync(provider(mail))[-1].messages == ()
    mail.google.remove_labels(REP, draft, ("DRAFT",))
    mail.google.add_labels(REP, draft, ("SENT",))

    pages = store.sync(provider(mail))

    assert [m.provider_id for p in pages for m in p.messages] == [draft]
    assert store.messages[draft].direction is Direction.OUTBOUND


def test_expired_history_resyncs_without_emitting_known_messages_again(mail: Mail) -> None:
    seed(mail, [3, 3, 3])
    store = MemoryStore()
    store.sync(provider(mail))
    before = set(mail.dates)
    mail.thread(2, START + timedelta(days=20))
    mail.google.expire_history(REP)

    pages = store.sync(provider(mail, page_size=4))

    emitted = {m.provider_id for p in pages for m in p.messages}
    assert emitted == set(mail.dates) - before
    assert max(store.emitted.values()) == 1
    assert store.cursor == GmailCursor.history(str(mail.google.history_id(REP))).dumps()
    assert mail.google.meter.requests["gmail.users.getProfile"] == 2


# --- failures --------------------------------------------------------------------------------


def test_a_429_with_retry_after_and_a_503_are_recovered(mail: Mail, sleeps: Sleeps) -> None:
    seed(mail, [3, 3])
    google = mail.google
    google.faults.add(Fault(path=r"/messages$", status=429, headers={"Retry-After": "7"}))
    google.faults.add(Fault(path=r"^/batch/gmail/v1$", status=503))
    store = MemoryStore()

    store.sync(provider(mail, sleeps))

    assert set(store.emitted) == set(mail.dates)
    assert sleeps[0] == 7.0  # Retry-After honoured
    assert len(sleeps) == 2
    assert google.meter.statuses[429] == 1 and google.meter.statuses[503] == 1


def test_a_connection_reset_is_retried(mail: Mail, sleeps: Sleeps) -> None:
    seed(mail, [2])
    # httplib2 itself tries a dropped connection twice; the policy retries after that
    mail.google.faults.add(Fault(path=r"/messages$", action="reset", times=2))
    store = MemoryStore()

    store.sync(provider(mail, sleeps))

    assert set(store.emitted) == set(mail.dates)
    assert len(sleeps) == 1


def test_a_429_on_one_batch_part_resends_only_that_part(mail: Mail, sleeps: Sleeps) -> None:
    seed(mail, [2] * 6)
    throttled = list(mail.threads)[2]
    mail.google.faults.add(
        Fault(path=f"/threads/{throttled}$", status=429, headers={"Retry-After": "3"})
    )
    store = MemoryStore()
    gmail = provider(mail, sleeps)

    store.sync(gmail)

    assert set(store.emitted) == set(mail.dates)
    assert sleeps == [3.0]
    assert mail.google.meter.requests["gmail.batch"] == 1  # the lone part resent as itself
    assert mail.google.meter.statuses[429] == 1
    assert mail.google.meter.requests["gmail.threads.get"] == 6  # the throttled part answered once
    assert gmail.quota_units == 1 + 5 + 10 * 7


def test_a_part_deleted_since_listing_is_skipped(mail: Mail) -> None:
    seed(mail, [2] * 3)
    gone = list(mail.threads)[1]
    body = json.dumps(
        {
            "error": {
                "code": 404,
                "message": "Requested entity was not found.",
                "errors": [{"reason": "notFound"}],
            }
        }
    )
    mail.google.faults.add(Fault(path=f"/threads/{gone}$", status=404, body=body))
    store = MemoryStore()

    store.sync(provider(mail))

    assert set(store.emitted) == set(mail.dates) - set(mail.threads[gone])


def test_throttling_that_does_not_end_raises_provider_error(mail: Mail, sleeps: Sleeps) -> None:
    seed(mail, [1])
    mail.google.faults.add(Fault(path=r"/messages$", status=503, times=100))

    with pytest.raises(ProviderError, match="503"):
        MemoryStore().sync(provider(mail, sleeps))
    assert len(sleeps) == RetryPolicy().attempts - 1


def test_a_revoked_grant_raises_needs_reauth(mail: Mail) -> None:
    seed(mail, [2])
    gmail = provider(mail)
    store = MemoryStore()
    store.sync(gmail)  # holds a valid access token now
    mail.google.revoke(REP)  # the access token now gets 401, the refresh token invalid_grant

    with pytest.raises(NeedsReauth):
        store.sync(gmail)


def test_a_401_that_outlives_the_token_refresh_raises_needs_reauth(mail: Mail) -> None:
    seed(mail, [1])
    mail.google.faults.add(Fault(path=r"/profile$", status=401, times=10))

    with pytest.raises(NeedsReauth, match="401"):
        MemoryStore().sync(provider(mail))
    assert mail.google.meter.requests["oauth.token"] >= 2  # refreshed, and still refused


def test_a_revoked_refresh_token_raises_needs_reauth_before_any_call(mail: Mail) -> None:
    seed(mail, [2])
    gmail = provider(mail)
    mail.google.revoke(REP)

    with pytest.raises(NeedsReauth, match="invalid_grant"):
        MemoryStore().sync(gmail)
    assert mail.google.meter.requests["gmail.users.getProfile"] == 0


def test_a_repeated_page_token_stops_the_listing(mail: Mail) -> None:
    seed(mail, [1] * 3)
    looping = json.dumps({"messages": [], "nextPageToken": "again", "resultSizeEstimate": 3})
    mail.google.faults.add(Fault(path=r"/messages$", status=200, body=looping, times=3))

    with pytest.raises(ProviderError, match="repeated a page token"):
        MemoryStore().sync(provider(mail))


# --- cost ------------------------------------------------------------------------------------


def test_first_sync_cost_per_message_on_threads_of_three(mail: Mail) -> None:
    seed(mail, [3] * 100)
    store = MemoryStore()
    gmail = provider(mail)

    store.sync(gmail)

    messages = len(mail.dates)
    assert len(store.emitted) == messages
    assert gmail.quota_units / messages <= 4  # 1 + 5 + 100 × 10 units for 300 messages
    assert gmail.http_requests <= 6  # token, profile, list, 2 batches of 50 threads
    assert gmail.http_requests == mail.google.meter.requests["http"]
    assert gmail.quota_units == mail.google.meter.total_units


# --- pieces ----------------------------------------------------------------------------------


def test_cursor_round_trips_and_refuses_foreign_text() -> None:
    for cursor in (
        GmailCursor.listing("123", "tok"),
        GmailCursor.listing("5"),
        GmailCursor.history("9"),
    ):
        assert GmailCursor.loads(cursor.dumps()) == cursor
    assert GmailCursor.loads(None) is None
    for text in (
        "",
        "{}",
        "[1]",
        '{"phase":"delta","history_id":"1"}',
        '{"phase":"list","history_id":"x"}',
    ):
        with pytest.raises(ProviderError):
            GmailCursor.loads(text)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://gmail.googleapis.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:8080", True),
        ("http://localhost", True),
        ("http://gmail.example.com", False),
        ("ftp://127.0.0.1", False),
        ("gmail.googleapis.com", False),
    ],
)
def test_plain_http_endpoints_are_refused_unless_loopback(url: str, ok: bool) -> None:
    if ok:
        assert check_endpoint(url, "endpoint") == url
    else:
        with pytest.raises(ValueError, match="loopback"):
            check_endpoint(url, "endpoint")
