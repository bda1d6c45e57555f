"""`python -m bench._counted FILE MODULE ARGS…`: run MODULE as `python -m` would, counting what
the process asks PostgreSQL, and write the counts to FILE (JSON) twice a second and at exit.

Counted at the driver (psycopg), so nothing in maillink changes and nothing escapes: every
statement (`cursor.execute`, `executemany` once, a connection's ping included: `pings`), every
transaction that ends (a commit or a rollback of an open transaction; a rollback of an idle
connection sends nothing and is not counted), and how many of those transactions wrote
(INSERT, UPDATE, DELETE or SELECT … FOR UPDATE). `statements` counts each statement's text,
cut short, to show which ones a round runs. The file also names the maillink that ran.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import runpy
import sys
import threading
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

_WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b|\bFOR\s+(NO\s+KEY\s+)?UPDATE\b", re.I)
_SPACES = re.compile(r"\s+")
_PINGS = frozenset({";", "SELECT 1"})  # SQLAlchemy's pool_pre_ping: ";" on psycopg


class Counts:
    """Thread-safe counters of one process's statements and transactions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self._writing: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    def statement(self, conn: Any, query: Any) -> None:
        text = query if isinstance(query, str) else getattr(query, "as_string", lambda: "")()
        if isinstance(query, bytes):
            text = query.decode(errors="replace")
        text = str(text)
        short = _SPACES.sub(" ", text).strip()[:90]
        with self.lock:
            self.totals["statements"] += 1
            self.statements[short] += 1
            if short.upper() in _PINGS:
                self.totals["pings"] += 1
            if _WRITES.search(text):
                self._writing[conn] = True
            if getattr(conn, "autocommit", False):
                self.totals["transactions"] += 1

    def end(self, conn: Any, how: str) -> None:
        try:
            open_ = conn.info.transaction_status != 0  # pq.TransactionStatus.IDLE
        except Exception:
            open_ = False
        if not open_:
            return
        with self.lock:
            self.totals["transactions"] += 1
            self.totals[how] += 1
            if self._writing.pop(conn, False):
                self.totals["writing"] += 1

    def snapshot(self) -> dict[str, Any]:
        import maillink

        with self.lock:
            return {
                "pid": os.getpid(),
                "maillink": str(Path(maillink.__file__).parent),
                "totals": dict(self.totals),
                "statements": dict(self.statements),
            }


def install(counts: Counts) -> None:
    """Wrap psycopg's cursors and connections so that every statement and end is counted."""
    import psycopg

    def wrap_execute(cls: type, name: str) -> None:
        original = cls.__dict__[name]

        def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            counts.statement(self.connection, query)
            return original(self, query, *args, **kwargs)

        setattr(cls, name, counted)

    wrap_execute(psycopg.Cursor, "execute")
    wrap_execute(psycopg.Cursor, "executemany")
    wrap_execute(psycopg.ServerCursor, "execute")

    for how in ("commit", "rollback"):
        original = psycopg.Connection.__dict__[how]

        def ended(self: Any, _original: Any = original, _how: str = how) -> Any:
            counts.end(self, _how)
            return _original(self)

        setattr(psycopg.Connection, how, ended)


def _write(out: Path, counts: Counts) -> None:
    part = out.with_suffix(".part")
    part.write_text(json.dumps(counts.snapshot()))
    part.replace(out)


def main() -> None:
    out, module, *args = sys.argv[1:]
    path = Path(out)
    counts = Counts()
    install(counts)
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.wait(0.5):
            _write(path, counts)

    threading.Thread(target=keep_writing, name="bench-counts", daemon=True).start()

    def final() -> None:
        stop.set()
        _write(path, counts)

    atexit.register(final)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
