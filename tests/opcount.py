"""Work measured as a count of Python lines executed: deterministic, unlike wall-clock time.

A test that must show that some code is fast (linear in its input, bounded by a cap, a deep page
no dearer than the first) counts the lines that code executes instead of timing it, so that a
loaded machine cannot make it fail. What runs inside C (a regex, `list.sort`, slicing) counts as
one line: a count catches Python-level loops that grow too fast, not slow C calls (bench/ times
those).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any


def lines_executed(call: Callable[[], Any], *where: ModuleType | type) -> int:
    """The number of lines executed, in this thread, while `call()` runs, in the source files of
    `where` (modules, or classes standing for the module they are defined in)."""
    files = {inspect.getfile(item) for item in where}
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code.co_filename in files else None

    previous = sys.gettrace()  # a coverage tracer, if any, is put back afterwards
    sys.settrace(calls)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count
