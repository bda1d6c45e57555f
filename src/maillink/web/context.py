"""What the views share: the maillink `App`, the web settings and the background syncs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from maillink.web.settings import WebSettings

if TYPE_CHECKING:
    from maillink.app import App
    from maillink.web.jobs import SyncJobs

EXTENSION = "maillink"


@dataclass(frozen=True)
class WebContext:
    app: App
    settings: WebSettings
    jobs: SyncJobs


def web_context() -> WebContext:
    context: WebContext = current_app.extensions[EXTENSION]
    return context
