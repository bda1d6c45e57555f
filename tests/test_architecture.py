"""The layers import each other one way only (docs/how-it-works.md): providers and CRM adapters
depend on the model, the linking core on the model, the CRM interface and the store; nothing in
the product depends on the sandbox. `python -m tools.import_graph` prints the whole graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tools.import_graph import SRC, graph, module_imports

# What each layer may import besides itself. Anything else is an arrow the wrong way.
ALLOWED = {
    "model": set(),
    "errors": set(),
    "holders": set(),
    "http_policy": set(),  # the one error policy of every HTTP client (providers and CRMs)
    "providers": {"model", "errors", "http_policy"},
    "crm": {"model", "errors", "http_policy"},
    "store": {"model", "errors", "holders"},
    "linking": {"model", "errors", "crm", "store"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    arrows = graph()
    assert layer in arrows or layer in {"model", "errors", "holders"}
    assert arrows.get(layer, set()) <= ALLOWED[layer], arrows.get(layer, set()) - ALLOWED[layer]


def test_the_product_never_imports_the_sandbox_but_for_the_demo() -> None:
    importers = {
        module
        for module, targets in module_imports().items()
        if any(t.startswith("maillink.sandbox") for t in targets)
        and not module.startswith("maillink.sandbox")
    }
    assert importers == {"maillink.demo"}


def test_the_graph_sees_every_layer() -> None:
    arrows = graph()
    assert {"crm", "store", "linking", "providers", "cli"} <= arrows.keys()
    assert "model" in arrows["crm"] and "store" in arrows["linking"]


# -- the store owns every statement (issue 10, seam 2) ---------------------------------------------
# Outside `maillink.store`, SQLAlchemy may be named for its types only: the `Connection` a store
# operation takes, and the exceptions (`sqlalchemy.exc`) a caller handles. Anything else
# (select, update, text, func, tables…) builds a statement, which belongs to the store.
SQLALCHEMY_TYPES = {"sqlalchemy": {"Connection"}, "sqlalchemy.engine": {"Connection"}}
SQLALCHEMY_ANY = {"sqlalchemy.exc"}


def _imported_names(path: Path) -> set[str]:
    """The SQLAlchemy names and `maillink.store` modules `path` imports, as `module:name`
    (`module:*` for a whole module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(f"{a.name}:*" for a in node.names if a.name.split(".")[0] == "sqlalchemy")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "sqlalchemy":
                found.update(f"{node.module}:{a.name}" for a in node.names)
            elif node.module == "maillink.store":
                found.update(f"maillink.store.{a.name}:*" for a in node.names)
    return found


def _outside_store() -> dict[str, Path]:
    package = SRC / "maillink"
    modules = {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(package.rglob("*.py"))
    }
    return {m: p for m, p in modules.items() if not m.startswith("maillink.store")}


def test_no_module_outside_the_store_imports_its_schema() -> None:
    outside = _outside_store()
    importers = {
        module
        for module, targets in module_imports().items()
        if module in outside and "maillink.store.schema" in targets
    }
    importers |= {  # `from maillink.store import schema` too
        module
        for module, path in outside.items()
        if "maillink.store.schema:*" in _imported_names(path)
    }
    assert importers == set()


def test_outside_the_store_sqlalchemy_is_imported_for_its_types_only() -> None:
    statements = {}
    for module, path in _outside_store().items():
        names = {
            n
            for n in _imported_names(path)
            if n.startswith("sqlalchemy")
            and n.split(":")[0] not in SQLALCHEMY_ANY
            and n.split(":")[1] not in SQLALCHEMY_TYPES.get(n.split(":")[0], set())
        }
        if names:
            statements[module] = names
    assert statements == {}
