"""The crash and fault tests: markers."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "crash: SIGKILLs maillink at random moments (a minute or so; -m 'not crash')"
    )
