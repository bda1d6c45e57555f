"""Errors the user fixes by changing a file or a variable, not by retrying.

The CLI turns a `ConfigError` into its message on stderr and exit status 2 (docs/cli.md).
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration or credentials problem.

    Its message is one line that names the file and key and says what to fix, e.g.
    ``maillink.toml: [crm] base_url is missing (e.g. base_url = "https://yourcompany.pipedrive.com")``.
    It never carries a secret's value.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class WrongKeyError(ConfigError):
    """A stored token cannot be decrypted with any configured encryption key."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "a stored token cannot be decrypted with the configured encryption key(s): "
            "was the key changed? add the old key after the new one in encryption_key"
        )


class ConnectError(Exception):
    """A mailbox connection (OAuth consent) did not complete; the message says why and what to do.

    The CLI prints it on one line and exits 1."""


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())
