"""Reading ahead: the next page is fetched while the caller stores and links the one in hand.

The provider's requests (and its pacing waits) then overlap the store's and the CRM's work, so a
mailbox that is paced to its quota keeps spending it while pages are linked. Nothing changes for
the caller: pages come in the same order, each with its cursor, and an error is raised where the
page it stopped would have come. At most `depth` pages wait in memory.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar, cast

T = TypeVar("T")

_DONE = object()
_POLL = 0.2  # seconds: how often a blocked producer checks whether the caller went away


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(pages: Iterator[T], *, depth: int = 1) -> Iterator[T]:
    """`pages`, produced in a background thread up to `depth` pages ahead of the caller.

    When the caller stops early (closes the iterator, or an exception unwinds it), the producer
    stops after the page it is reading; it never outlives the process (daemon thread).
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for page in pages:
                if not put(page):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the caller, raised there
            put(_Failed(exc))
        finally:
            close = getattr(pages, "close", None)
            if close is not None and stop.is_set():
                with contextlib.suppress(Exception):  # the caller is gone: nobody to tell
                    close()

    producer = threading.Thread(target=produce, name="maillink-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield cast(T, item)
    finally:
        stop.set()
