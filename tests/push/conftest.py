"""Gmail push fixtures: the sandboxes, a workspace with `[gmail] push_topic`, an App, a clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.e2e.conftest import google, pipedrive
from tests.e2e.support import DOMAIN

from maillink.app import App
from maillink.config import load_settings
from maillink.sandbox.google import GoogleSandbox
from maillink.sandbox.pipedrive import PipedriveSandbox
from maillink.sandbox.workspace import write_workspace

__all__ = ["Clock", "app", "config", "google", "pipedrive"]

TOPIC = "projects/acme-mail/topics/gmail-push"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand (the daemon's and the sandbox's)."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def seconds(self) -> float:
        return self.at.timestamp()

    def advance(self, delta: timedelta) -> None:
        self.at += delta


@pytest.fixture
def clock(google: GoogleSandbox) -> Clock:
    """The test's clock, shared by the sandbox's watches (their 7 days)."""
    moved = Clock()
    google.push.clock = moved.seconds
    return moved


def push_config(path: Path, topic: str = TOPIC) -> Path:
    text = path.read_text().replace("[gmail]\n", f'[gmail]\npush_topic = "{topic}"\n', 1)
    path.write_text(text)
    return path


@pytest.fixture
def config(tmp_path: Path, google: GoogleSandbox, pipedrive: PipedriveSandbox) -> Path:
    return push_config(write_workspace(tmp_path, google, pipedrive, internal_domains=[DOMAIN]))


@pytest.fixture
def app(config: Path) -> Iterator[App]:
    opened = App(load_settings(config))
    yield opened
    opened.close()
