"""The web app of `maillink serve`: sign in, connect mailboxes, choose the item of waiting threads."""

from __future__ import annotations

from maillink.web.factory import create_app
from maillink.web.settings import WebSettings

__all__ = ["WebSettings", "create_app"]
