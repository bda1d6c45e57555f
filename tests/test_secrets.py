"""TokenCipher: stored tokens encrypted with the newest key, readable with any configured key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maillink.config import load_credentials
from maillink.errors import ConfigError
from maillink.secrets import TokenCipher, WrongKeyError

PLAIN = '{"refresh_token": "1//0g-very-secret", "note": "naïve ✓"}'


@pytest.fixture(scope="module")
def old_key() -> str:
    return TokenCipher.generate_key()


@pytest.fixture(scope="module")
def new_key() -> str:
    return TokenCipher.generate_key()


def test_round_trip_gives_the_text_back_and_hides_it(new_key: str) -> None:
    cipher = TokenCipher([new_key])
    token = cipher.encrypt(PLAIN)
    assert "very-secret" not in token
    assert token != cipher.encrypt(PLAIN)  # a fresh IV every time
    assert cipher.decrypt(token) == PLAIN


def test_generated_keys_are_distinct_and_usable() -> None:
    keys = {TokenCipher.generate_key() for _ in range(5)}
    assert len(keys) == 5
    for key in keys:
        assert TokenCipher([key]).decrypt(TokenCipher([key]).encrypt("x")) == "x"


def test_after_rotation_the_new_key_encrypts_and_the_old_key_still_decrypts(
    old_key: str, new_key: str
) -> None:
    stored_before = TokenCipher([old_key]).encrypt(PLAIN)
    rotated = TokenCipher([new_key, old_key])

    assert rotated.decrypt(stored_before) == PLAIN
    written_after = rotated.encrypt(PLAIN)
    assert TokenCipher([new_key]).decrypt(written_after) == PLAIN
    with pytest.raises(WrongKeyError):
        TokenCipher([old_key]).decrypt(written_after)


def test_rotate_re_encrypts_under_the_newest_key(old_key: str, new_key: str) -> None:
    stored = TokenCipher([old_key]).encrypt(PLAIN)

    reencrypted = TokenCipher([new_key, old_key]).rotate(stored)

    assert TokenCipher([new_key]).decrypt(reencrypted) == PLAIN
    with pytest.raises(WrongKeyError):
        TokenCipher([old_key]).decrypt(reencrypted)


@pytest.mark.parametrize("token", ["not-a-token", "", "gAAAAA" + "x" * 80])
def test_a_token_no_key_decrypts_is_a_wrong_key_error(new_key: str, token: str) -> None:
    with pytest.raises(WrongKeyError) as error:
        TokenCipher([new_key]).decrypt(token)
    assert isinstance(error.value, ConfigError)


def test_wrong_key_error_says_what_to_do(old_key: str, new_key: str) -> None:
    token = TokenCipher([old_key]).encrypt(PLAIN)
    for action in (TokenCipher([new_key]).decrypt, TokenCipher([new_key]).rotate):
        with pytest.raises(WrongKeyError) as error:
            action(token)
        message = str(error.value)
        assert message == (
            "a stored token cannot be decrypted with the configured encryption key(s): "
            "was the key changed? add the old key after the new one in encryption_key"
        )
        assert old_key not in message and new_key not in message and "secret" not in message


@pytest.mark.parametrize("keys", [[], [""], ["  ", ""], ""])
def test_no_key_says_where_to_set_one(keys: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        TokenCipher(keys)
    assert str(error.value) == (
        "no encryption key: set encryption_key in credentials.json or MAILLINK_ENCRYPTION_KEY "
        "(generate one with: maillink keys generate)"
    )


def test_malformed_key_is_refused_without_echoing_it(new_key: str) -> None:
    bad = "not-a-fernet-key-s3cr3t"
    for keys, which in (([bad], "the encryption key"), ([new_key, bad], "encryption key #2")):
        with pytest.raises(ConfigError) as error:
            TokenCipher(keys)
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(which) and "not a valid key" in message
        assert bad not in message and new_key not in message


def test_keys_never_show_in_the_repr(old_key: str, new_key: str) -> None:
    cipher = TokenCipher([new_key, old_key])
    assert new_key not in repr(cipher) and old_key not in repr(cipher)
    assert repr(cipher) == "TokenCipher(<2 keys>)"


def test_comma_separated_keys_as_from_the_environment(old_key: str, new_key: str) -> None:
    token = TokenCipher([old_key]).encrypt(PLAIN)
    assert TokenCipher(f"{new_key}, {old_key}").decrypt(token) == PLAIN


def test_cipher_from_credentials_keys(tmp_path: Path, old_key: str, new_key: str) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"encryption_key": [new_key, old_key]}), encoding="utf-8")
    cipher = TokenCipher(load_credentials(path, env={}).encryption_keys)
    assert cipher.decrypt(TokenCipher([old_key]).encrypt(PLAIN)) == PLAIN
