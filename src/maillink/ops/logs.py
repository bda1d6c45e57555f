"""The daemon's logs: one JSON object per line (or plain text), with account ids, never tokens.

Context travels in the standard `extra=` fields (`account_id`, `account`, `owner`, `event`, …);
every message and field goes through `redact` first, so a token that slipped into an exception
text (a URL with `access_token=`, an `Authorization` header) is masked before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# The fields of a LogRecord itself; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)

_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer …, Basic …
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    # header, query-string, JSON and form fields that carry secrets
    (
        re.compile(
            r"(?i)((?:x-api-token|access_token|refresh_token|id_token|api_token|client_secret|"
            r"password|token)['\"]?\s*[:=]\s*['\"]?)[^\s&'\",}]+"
        ),
        r"\1***",
    ),
    (re.compile(r"(?i)([?&]code=)[^&\s]+"), r"\1***"),  # an OAuth authorization code
    # Google's token shapes, wherever they appear
    (re.compile(r"\bya29\.[A-Za-z0-9._-]+"), "***"),
    (re.compile(r"\b1//[A-Za-z0-9._-]{10,}"), "***"),
)


def redact(text: str) -> str:
    """`text` with anything that looks like a credential replaced by `***`."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields and,
    for an exception, its type and (redacted) text — tracebacks only at DEBUG level."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                data[key] = _clean(value)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data["error_type"] = type(exc).__name__
            data["error"] = redact(str(exc))
            if logging.getLogger("maillink").isEnabledFor(logging.DEBUG):
                data["traceback"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, redacted, with the account in front when the record names one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        account = getattr(record, "account", None)
        if account:
            text = text.replace(": ", f": [{account}] ", 1)
        return redact(text)


def configure(log_format: str, *, debug: bool = False, stream: TextIO | None = None) -> None:
    """Send maillink's logs to stderr (or `stream`) as `json` or `text`, INFO and up (DEBUG)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("maillink").setLevel(logging.DEBUG if debug else logging.INFO)
