"""Reading ahead: pages come in order, errors where they happened, and an early stop stops it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from maillink.providers.prefetch import prefetched


def test_pages_come_in_order_and_an_error_where_its_page_would_have_come() -> None:
    def pages() -> Iterator[int]:
        yield from range(5)
        raise RuntimeError("page 5 failed")

    seen = []
    with pytest.raises(RuntimeError, match="page 5 failed"):
        for page in prefetched(pages()):
            seen.append(page)
    assert seen == [0, 1, 2, 3, 4]


def test_the_next_page_is_read_while_the_caller_works_on_this_one() -> None:
    read = threading.Event()

    def pages() -> Iterator[str]:
        yield "first"
        read.set()  # reached while the caller still holds the first page
        yield "second"

    iterator = prefetched(pages())
    assert next(iterator) == "first"
    assert read.wait(2)
    assert list(iterator) == ["second"]


def test_a_caller_that_stops_early_stops_the_reader_and_closes_its_pages() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def pages() -> Iterator[int]:
        try:
            for n in range(1000):
                produced.append(n)
                yield n
        finally:
            closed.set()

    iterator = prefetched(pages(), depth=1)
    assert next(iterator) == 0
    iterator.close()  # as `for … : break` or an exception in the caller does
    assert closed.wait(2)  # closed: the pages can yield nothing more, no need to wait and see
    assert len(produced) <= 4  # one in hand, one queued, one being read
