"""End-to-end fixtures: running sandboxes, a workspace of config files, an App, a CLI runner.

`crm` is the CRM the workspace points at: Pipedrive unless a test is parametrized with
`both_crms` (then it runs once on each CRM and asserts the same outcomes through `CrmSandbox`).
Tests about one CRM's specifics are marked `pipedrive_only` and keep the default.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.support import CRMS, DOMAIN, CrmSandbox

from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.hubspot import HubSpotSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pipedrive_only: about Pipedrive specifics (tokens, its webhooks, projects, merges), "
        "not run on HubSpot",
    )


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def pipedrive() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def hubspot() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def crm(request: pytest.FixtureRequest) -> CrmSandbox:
    """The CRM under test: "pipedrive" (the default) or "hubspot" (`both_crms`)."""
    kind = getattr(request, "param", "pipedrive")
    if kind not in CRMS:
        raise ValueError(f"crm {kind!r}: use one of {CRMS}")
    if kind == "hubspot" and request.node.get_closest_marker("pipedrive_only"):
        raise ValueError("a pipedrive_only test cannot run on HubSpot")
    return CrmSandbox.of(request.getfixturevalue(kind))


@pytest.fixture
def config(tmp_path: Path, google: GoogleSandbox, crm: CrmSandbox) -> Path:
    if crm.kind == "hubspot":
        return write_workspace(
            tmp_path, google, None, hubspot=crm.sandbox, internal_domains=[DOMAIN]
        )
    return write_workspace(tmp_path, google, crm.sandbox, internal_domains=[DOMAIN])


@pytest.fixture
def app(config: Path) -> Iterator[App]:
    opened = App(load_settings(config))
    yield opened
    opened.close()


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(config: Path) -> Callable[..., Ran]:
    """Run `python -m maillink …` as a user would, with MAILLINK_CONFIG set."""

    def run(*args: str, timeout: float = 120) -> Ran:
        env = dict(os.environ, MAILLINK_CONFIG=str(config))
        done = subprocess.run(
            [sys.executable, "-m", "maillink", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    return run
