"""ruff (lint and format) and mypy are part of the test command, and keep the code clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "src", "tests", "bench", "tools"],
        ["ruff", "format", "--check", "src", "tests", "bench", "tools"],
        ["mypy"],
    ],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_code_is_clean(command: list[str]) -> None:
    done = subprocess.run(
        [_tool(command[0]), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


# -- no test asserts on wall-clock time ------------------------------------------------------

_CLOCKS = {"perf_counter", "monotonic", "time", "perf_counter_ns", "monotonic_ns", "time_ns"}
_TIMING_NAMES = {"elapsed", "duration"}


def _calls(node: ast.AST) -> set[str]:
    """The names called in `node`: `time.monotonic()` → monotonic, `best(f)` → best."""
    called = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            if isinstance(func, ast.Attribute):
                if not (func.attr == "time" and getattr(func.value, "id", "") == "datetime"):
                    called.add(func.attr)
            elif isinstance(func, ast.Name):
                called.add(func.id)
    return called


def _names(node: ast.AST) -> set[str]:
    return {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)}


def _timed(node: ast.AST, tainted: set[str], clocks: set[str]) -> bool:
    """Whether `node` reads a clock, uses a name derived from one, or measures a duration with
    `datetime.now()` (a subtraction; `datetime.now()` alone is a timestamp, not a measurement)."""
    return bool(
        _calls(node) & clocks
        or _names(node) & tainted
        or any(_measures_with_now(sub) for sub in ast.walk(node))
    )


def _measures_with_now(node: ast.AST) -> bool:
    """`datetime.now(UTC) - started`, but not `datetime.now(UTC) - timedelta(days=1)`."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub)):
        return False
    sides = (_calls(node.left), _calls(node.right))
    return any(
        side & {"now", "utcnow"} and "timedelta" not in other
        for side, other in (sides, sides[::-1])
    )


def _taint(scope: ast.AST, clocks: set[str]) -> set[str]:
    """The names in `scope` that hold a clock reading or something computed from one."""
    tainted = set(_TIMING_NAMES)
    for _ in range(3):  # derived from derived names, to a small fixpoint
        for node in ast.walk(scope):
            value: ast.AST | None = None
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                value = node.value
                targets = [*node.targets] if isinstance(node, ast.Assign) else [node.target]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend")
            ):
                value, targets = ast.Tuple(elts=node.args), [node.func.value]
            if value is not None and _timed(value, tainted, clocks):
                for target in targets:
                    tainted |= _names(target) - {"deadline"}
    return tainted


def _wall_clock_asserts(tree: ast.AST) -> list[int]:
    """Lines of `assert`s whose condition compares a clock reading (`time.monotonic()`,
    `perf_counter()`, `time.time()`…), a name derived from one (assigned from it, or appended
    to), a name called `elapsed`/`duration`, or what a function of the file returns that is one.

    `deadline` is not followed: `assert time.monotonic() < deadline` guards a poll against a hang,
    it does not measure anything. Only the file's own code is read: timestamps that a sandbox
    records, or a clock read in another module's helper, are not seen.
    """
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    clocks = set(_CLOCKS)

    def untimed(function: ast.FunctionDef) -> bool:  # most tests: nothing to follow
        return not (
            _calls(function) & (clocks | {"now", "utcnow"}) or _names(function) & _TIMING_NAMES
        )

    for _ in range(2):  # functions returning a clock reading are clocks too: best(call)
        for function in functions:
            if untimed(function):
                continue
            tainted = _taint(function, clocks)
            if any(
                isinstance(node, ast.Return)
                and node.value is not None
                and _timed(node.value, tainted, clocks)
                for node in ast.walk(function)
            ):
                clocks.add(function.name)
    found = []
    for function in functions:
        if untimed(function):
            continue
        tainted = _taint(function, clocks)
        for node in ast.walk(function):
            if isinstance(node, ast.Assert) and any(
                isinstance(sub, ast.Compare)
                and "deadline" not in _names(sub)
                and _timed(sub, tainted, clocks)
                for sub in ast.walk(node.test)
            ):
                found.append(node.lineno)
    return sorted(set(found))


def test_the_wall_clock_scan_sees_what_it_should() -> None:
    flagged = """
import time
def t():
    began = time.perf_counter()
    work()
    assert time.perf_counter() - began < 0.5
    seconds = time.monotonic() - began
    rate = units / seconds
    assert 0.85 < rate <= 0.96
    waits = []
    waits.append(time.monotonic() - began)
    assert min(waits) >= 0.29
    assert elapsed < 2

    started = datetime.now(UTC)
    assert datetime.now(UTC) - started < timedelta(seconds=10)

    def best(call):
        began = time.perf_counter()
        call()
        return time.perf_counter() - began

    assert best(work) < 10 * best(other)
"""
    fine = """
import time
from datetime import UTC, datetime
def t():
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.01)
    assert time.monotonic() < deadline, "never came"
    assert datetime.now(UTC) > start
    assert row.created_at >= datetime.now(UTC) - timedelta(days=1)
    assert fake.now == 5.0
    assert len(calls) == 3
"""
    assert _wall_clock_asserts(ast.parse(flagged)) == [6, 9, 12, 13, 16, 23]
    assert _wall_clock_asserts(ast.parse(fine)) == []


def test_no_test_asserts_on_wall_clock_time() -> None:
    """A loaded machine must not fail a test: count, order, or inject a clock (bench/ times)."""
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for line in _wall_clock_asserts(ast.parse(path.read_text(), str(path)))
    ]
    assert found == []
