"""The layers import each other one way only (docs/how-it-works.md): providers and CRM adapters
depend on the model, the linking core on the model, the CRM interface and the store; nothing in
the product depends on the sandbox. `python -m tools.import_graph` prints the whole graph."""

from __future__ import annotations

import pytest
from tools.import_graph import graph, module_imports

# What each layer may import besides itself. Anything else is an arrow the wrong way.
ALLOWED = {
    "model": set(),
    "errors": set(),
    "holders": set(),
    "providers": {"model", "errors"},
    "crm": {"model", "errors"},
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
