"""The import graph between maillink's top-level modules and packages.

    python -m tools.import_graph            # every arrow, one source a line
    python -m tools.import_graph --dot      # the same for Graphviz

`tests/test_architecture.py` asserts the arrows that keep the layers apart (docs/how-it-works.md).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "maillink"


def _part(module: str) -> str:
    """`maillink.store.mail` → `store`; `maillink` itself → `maillink`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The maillink modules `path` imports (at any depth of the file: lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE:
                found.update(f"{PACKAGE}.{alias.name}" for alias in node.names)
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PACKAGE + "."))
    return found


def module_imports() -> dict[str, set[str]]:
    """Each module of the package and the maillink modules it imports."""
    return {_module_name(path): imports(path) for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    """Each top-level part (`store`, `crm`, `model`, `cli`…) and the parts it imports."""
    arrows: dict[str, set[str]] = defaultdict(set)
    for module, targets in module_imports().items():
        source = _part(module)
        arrows[source].update(_part(t) for t in targets if _part(t) != source)
    return dict(arrows)


def main(argv: list[str]) -> None:
    arrows = graph()
    if "--dot" in argv:
        print("digraph maillink {")
        for source in sorted(arrows):
            for target in sorted(arrows[source]):
                print(f'  "{source}" -> "{target}";')
        print("}")
        return
    for source in sorted(arrows):
        print(f"{source} -> {', '.join(sorted(arrows[source])) or '(nothing)'}")


if __name__ == "__main__":
    main(sys.argv[1:])
