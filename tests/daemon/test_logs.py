"""The daemon's logs: one JSON object per line, with account ids, never a token."""

from __future__ import annotations

import io
import json
import logging

import pytest

from maillink.ops.logs import JsonFormatter, TextFormatter, configure, redact

SECRETS = [
    "GET /gmail/v1/users/me/profile?access_token=ya29.a0AfB_S3CR3T HTTP/1.1",
    "Authorization: Bearer Zm9vYmFyS3CR3T",
    '{"refresh_token": "1//0gS3CR3TRefreshTokenValue", "scopes": []}',
    "x-api-token: 0123456789abcdefS3CR3T",
    "https://127.0.0.1:8080/callback?state=s&code=4/0AanS3CR3T&scope=x",
    "client_secret=GOCSPX-S3CR3T",
    "password: hunter2-S3CR3T",
    "seen ya29.S3CR3T-in-a-message and 1//0gS3CR3T-elsewhere",
]


@pytest.mark.parametrize("text", SECRETS)
def test_redaction_masks_every_kind_of_credential(text: str) -> None:
    masked = redact(text)
    assert "S3CR3T" not in masked, masked
    assert "***" in masked


def test_redaction_leaves_ordinary_text_alone() -> None:
    text = "rep@acme.example: 25 new messages over 1 pages; HTTP status code: 429"
    assert redact(text) == text


def _logged(formatter: logging.Formatter, **extra: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("maillink.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        try:
            raise RuntimeError("token refresh failed: refresh_token=1//0gLeakedValue12345")
        except RuntimeError as exc:
            logger.warning("round failed for %s", "rep@acme.example", exc_info=exc, extra=extra)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_logs_are_one_object_per_line_with_the_context_and_no_token() -> None:
    line = _logged(JsonFormatter(), account_id=7, account="rep@acme.example", event="round")
    assert line.count("\n") == 1
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["message"] == "round failed for rep@acme.example"
    assert (entry["account_id"], entry["account"], entry["event"]) == (
        7,
        "rep@acme.example",
        "round",
    )
    assert entry["error_type"] == "RuntimeError"
    assert "1//0gLeakedValue12345" not in line
    assert "traceback" not in entry  # only at debug level


def test_text_logs_name_the_account_and_hide_tokens() -> None:
    line = _logged(TextFormatter(), account="rep@acme.example")
    assert "[rep@acme.example]" in line and "1//0gLeakedValue12345" not in line


def test_configure_sends_maillink_info_to_the_stream() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("maillink").level)
    try:
        configure("json", stream=stream)
        logging.getLogger("maillink.daemon").info("hello", extra={"account_id": 3})
        logging.getLogger("urllib3").info("not maillink: below the root's level")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before[0]:
            root.addHandler(handler)
        root.setLevel(before[1])
        logging.getLogger("maillink").setLevel(before[2])
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["account_id"] == 3
