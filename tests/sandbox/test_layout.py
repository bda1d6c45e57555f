"""The sandbox is laid out by service: one package each for Google, Microsoft, Pipedrive and
HubSpot, the shared plumbing beside them, and route handlers small enough to read one at a time."""

from __future__ import annotations

import ast
from pathlib import Path

import maillink.sandbox

SANDBOX = Path(maillink.sandbox.__file__).parent
SHARED = {"__init__.py", "_server.py", "browser.py", "seed.py", "workspace.py"}
LONGEST_FUNCTION = 60  # lines, decorators excluded


def long_functions(root: Path, limit: int = LONGEST_FUNCTION) -> dict[str, int]:
    """Every function (or method) under `root` longer than `limit` lines, with its length."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    found[f"{path.relative_to(root)}:{node.lineno} {node.name}"] = length
    return found


def test_each_service_is_a_package_beside_the_shared_plumbing() -> None:
    modules = {p.name for p in SANDBOX.glob("*.py")}
    packages = {p.parent.name for p in SANDBOX.glob("*/__init__.py")}
    assert modules == SHARED
    assert packages == {"google", "hubspot", "microsoft", "pipedrive"}


def test_the_sandboxes_are_imported_from_their_packages() -> None:
    from maillink.sandbox.google import SCOPE_METADATA, GoogleSandbox
    from maillink.sandbox.hubspot import HubSpotSandbox
    from maillink.sandbox.microsoft import MicrosoftSandbox
    from maillink.sandbox.pipedrive import ADMIN_COSTS, TOKEN_COSTS, PipedriveSandbox

    assert GoogleSandbox.__module__ == "maillink.sandbox.google.sandbox"
    assert MicrosoftSandbox.__module__ == "maillink.sandbox.microsoft.sandbox"
    assert PipedriveSandbox.__module__ == "maillink.sandbox.pipedrive.sandbox"
    assert HubSpotSandbox.__module__ == "maillink.sandbox.hubspot.sandbox"
    assert SCOPE_METADATA.endswith("gmail.metadata") and TOKEN_COSTS and ADMIN_COSTS


def test_no_sandbox_function_is_longer_than_a_screen() -> None:
    assert long_functions(SANDBOX) == {}
