"""End-to-end fixtures: running sandboxes, a workspace of config files, an App, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.support import DOMAIN

from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace


@pytest.fixture
def google() -> Iterator[GoogleSandbox]:
    with GoogleSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def pipedrive() -> Iterator[PipedriveSandbox]:
    with PipedriveSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def config(tmp_path: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox) -> Path:
    return write_workspace(tmp_path, google, pipedrive, internal_domains=[DOMAIN])


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
