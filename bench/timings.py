"""The wall-clock timings that the tests no longer assert: `python -m bench.timings`.

The tests pin these properties with operation counts (tests/opcount.py) or an injected clock, so
that a loaded machine cannot fail them. This script measures the same things in seconds, each as
a ratio against a baseline measured in the same run on the same machine, so that the figures
compare across machines:

- header parsing: a 500-recipient To and Cc, and each hostile 2-4 MB header of
  tests/providers/test_headers.py, against a plain one-line header;
- the Gmail sandbox's pages: a page 99,000 messages deep against the first page;
- pacing: a paced backfill against the sandbox's quota, in real seconds (the test uses a clock
  that only the pacer's sleeps move).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from maillink.providers.headers import message_from_headers

RECEIVED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
HOSTILE = {
    "200,000 addresses": ", ".join(f"user{i}@example.com" for i in range(200_000)),
    "unterminated quote": '"' + "x" * 2_000_000,
    "unclosed comment": "(" * 2_000_000,
    "2 MB of <": "<" * 2_000_000,
    "2 MB encoded-word": "=?utf-8?q?" + "=41" * 700_000 + "?=",
    "2 MB address": "Name <" + "a" * 2_000_000 + "@x.com>, b@y.com",
}


def best(call: Callable[[], Any], repeat: int = 5) -> float:
    """The fastest of `repeat` runs, in seconds (the least disturbed by other work)."""
    timings = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        timings.append(time.perf_counter() - began)
    return min(timings)


def _parse(*headers: tuple[str, str]) -> Callable[[], Any]:
    return lambda: message_from_headers("rep@acme.com", "m1", "t1", headers, internal_date=RECEIVED)


def headers() -> None:
    baseline = best(_parse(("From", "a@x.com"), ("To", "b@y.com"), ("Subject", "Hello")), 50)
    print(f"headers: baseline (3 short headers) {baseline * 1e6:.0f} µs")
    to = ", ".join(f'"Person {i}" <person{i}@company{i % 40}.example>' for i in range(500))
    took = best(_parse(("From", "a@x.com"), ("To", to), ("Cc", to)))
    print(f"  500 recipients in To and Cc: {took * 1e3:.1f} ms, {took / baseline:.0f}× baseline")
    for name, payload in HOSTILE.items():
        parse = _parse(
            ("From", "a@x.com"), ("To", payload), ("Subject", payload), ("Date", payload)
        )
        took = best(parse, 3)
        print(f"  {name}: {took * 1e3:.1f} ms, {took / baseline:.0f}× baseline")


def pages() -> None:
    from maillink.sandbox.google.mailbox import Mailbox

    mailbox = Mailbox("rep@example.com")
    for i in range(100_000):
        mailbox.add(
            f"{i:x}",
            i,
            headers=(),
            internal_ms=(i * 7919) % 100_000,
            thread_id=None,
            label_ids=("INBOX",),
            snippet="",
            size_estimate=1,
        )
    start = mailbox.oldest_start
    _, deep_key = mailbox.list_page((), False, None, 99_000)
    _, deep_after = mailbox.history_page(start, (), None, None, 99_000)
    first = best(lambda: mailbox.list_page(("INBOX",), False, None, 500))
    deep = best(lambda: mailbox.list_page(("INBOX",), False, deep_key, 500))
    print(f"sandbox list page: first {first * 1e3:.2f} ms, 99,000 deep {deep / first:.2f}× it")
    first = best(lambda: mailbox.history_page(start, ("messageAdded",), None, None, 500))
    deep = best(lambda: mailbox.history_page(start, ("messageAdded",), None, deep_after, 500))
    print(f"sandbox history page: first {first * 1e3:.2f} ms, 99,000 deep {deep / first:.2f}× it")


def pacing() -> None:
    from google.oauth2.credentials import Credentials

    from maillink.providers.gmail import GmailProvider
    from maillink.providers.gmail_api import SCOPE_METADATA
    from maillink.providers.pacing import Pacer
    from maillink.sandbox.google import GoogleSandbox

    rep, quota = "rep@acme.example", 200.0
    with GoogleSandbox(quota_units_per_second=quota) as google:
        google.add_mailbox(rep)
        start = datetime(2025, 1, 6, tzinfo=UTC)
        for t in range(80):
            thread = None
            for k in range(2):
                added = google.add_message(
                    rep,
                    headers=[("From", "ann@client.example"), ("Subject", f"t{t}")],
                    internal_date=start + timedelta(hours=t, minutes=k),
                    thread_id=thread,
                )
                thread = thread or added
        credentials = Credentials(
            None,
            refresh_token=google.issue_refresh_token(rep),
            token_uri=google.token_uri,
            client_id=google.client_id,
            client_secret=google.client_secret,
            scopes=[SCOPE_METADATA],
        )
        pacer = Pacer.per_minute(quota * 60 * 0.95)
        gmail = GmailProvider(
            rep,
            credentials,
            api_endpoint=google.api_endpoint,
            page_size=40,
            pacer=pacer,
            prefetch=True,
        )

        class Nothing:
            def known_messages(self, ids: object) -> set[str]:
                return set()

            def thread_dates(self, keys: object) -> dict[str, datetime]:
                return {}

        began = time.perf_counter()
        messages = sum(len(page.messages) for page in gmail.pull(None, Nothing()))
        seconds = time.perf_counter() - began
    used = (google.meter.total_units - pacer.burst) / seconds / quota
    print(
        f"pacing: {messages} messages in {seconds:.2f} s, {used:.0%} of the quota past the burst "
        f"(paced at 95%), {google.meter.statuses[429]} answers 429"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runs = {"headers": headers, "pages": pages, "pacing": pacing}
    parser.add_argument("what", nargs="*", help="headers, pages, pacing (default: all)")
    chosen = parser.parse_args().what or list(runs)
    unknown = [name for name in chosen if name not in runs]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}; choose from {', '.join(runs)}")
    for name in chosen:
        runs[name]()


if __name__ == "__main__":
    main()
