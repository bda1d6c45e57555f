"""One way to build a mailbox round: the syncer is put together in one place, leases are taken in
one place (`maillink.daemon.rounds`), and the `App` is typed wherever it is passed."""

from __future__ import annotations

import ast
from pathlib import Path

import maillink

SRC = Path(maillink.__file__).parent


def _modules() -> dict[str, ast.Module]:
    return {str(path.relative_to(SRC)): ast.parse(path.read_text()) for path in SRC.rglob("*.py")}


def _callers(name: str) -> set[str]:
    """The modules that call `name(...)` (`Syncer`, or a qualified `leases.acquire`)."""
    found = set()
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.add(module)
    return found


def test_the_syncer_is_put_together_in_one_place() -> None:
    assert _callers("Syncer") == {"app.py"}


def test_leases_are_taken_in_one_place() -> None:
    assert _callers("leases.acquire") == {"daemon/rounds.py"}


def test_the_rounds_live_in_the_daemon_package() -> None:
    assert {"daemon/__init__.py", "daemon/loop.py", "daemon/rounds.py", "daemon/schedule.py"} <= (
        _modules().keys()
    )
    assert not {"daemon.py", "leased_round.py", "schedule.py"} & _modules().keys()


def test_no_signature_takes_an_untyped_app() -> None:
    untyped = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                for arg in args.posonlyargs + args.args + args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    if arg.arg == "app" and "Any" in annotation:
                        untyped.append(f"{module}:{node.lineno} {node.name}")
    assert untyped == []
