"""Encryption of the OAuth tokens kept in the store (Fernet, with key rotation).

The first key encrypts, every key decrypts: to rotate, put the new key first and keep the old one
after it until `maillink keys rotate` has re-encrypted every stored token. Neither keys nor
plaintexts ever reach a message, a repr or a log.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from maillink.errors import ConfigError, WrongKeyError

__all__ = ["TokenCipher", "WrongKeyError"]

NO_KEY = (
    "no encryption key: set encryption_key in credentials.json or MAILLINK_ENCRYPTION_KEY "
    "(generate one with: maillink keys generate)"
)


class TokenCipher:
    """Encrypts text with the first key; decrypts with any of `keys` (newest first)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if isinstance(keys, str):
            keys = keys.split(",")
        cleaned = [key.strip() for key in keys if key and key.strip()]
        if not cleaned:
            raise ConfigError(NO_KEY)
        self._fernet = MultiFernet(
            [_fernet(key, position) for position, key in enumerate(cleaned, 1)]
        )
        self._count = len(cleaned)

    def __repr__(self) -> str:
        return f"TokenCipher(<{self._count} key{'s' if self._count > 1 else ''}>)"

    @staticmethod
    def generate_key() -> str:
        """A new random key, in the form encryption_key expects."""
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, text: str) -> str:
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("utf-8")).decode("utf-8")
        except (InvalidToken, UnicodeDecodeError):
            raise WrongKeyError() from None

    def rotate(self, token: str) -> str:
        """The same plaintext, encrypted again under the first (newest) key."""
        try:
            return self._fernet.rotate(token.encode("utf-8")).decode("ascii")
        except InvalidToken:
            raise WrongKeyError() from None


def _fernet(key: str, position: int) -> Fernet:
    try:
        return Fernet(key.encode("utf-8"))
    except (ValueError, binascii.Error, TypeError):
        which = "the encryption key" if position == 1 else f"encryption key #{position}"
        raise ConfigError(
            f"{which} is not a valid key (it must be 32 url-safe base64-encoded bytes; "
            "generate one with: maillink keys generate)"
        ) from None
