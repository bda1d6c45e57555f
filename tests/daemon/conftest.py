"""The daemon tests use the end-to-end fixtures: the sandboxes, a workspace, an App."""

from __future__ import annotations

from tests.e2e.conftest import app, cli, config, crm, google, pipedrive

__all__ = ["app", "cli", "config", "crm", "google", "pipedrive"]
