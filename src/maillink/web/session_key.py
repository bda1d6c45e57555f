"""The key that signs the web sessions: random, made once, kept encrypted in the store.

It lives in the `crm_state` table under `web.session_key`, encrypted with the tokens' key
(credentials.json `encryption_key`), so every `maillink serve` process sharing the store signs
alike. Each start re-encrypts it under the newest key, and `rotate_session_key` does it for
`maillink keys rotate`; if no configured key can read it any more, a new one is made (signed-in
users sign in again), never a crash.
"""

from __future__ import annotations

import logging
import secrets

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from maillink.errors import WrongKeyError
from maillink.secrets import TokenCipher
from maillink.store import Store, cache

NAME = "web.session_key"
log = logging.getLogger(__name__)


def session_key(store: Store, cipher: TokenCipher) -> str:
    """The session-signing key, made and stored on first use."""
    for _ in range(2):  # a second round only when another process stored one meanwhile
        with store.transaction() as conn:
            stored = cache.get_state(conn, NAME)
            if stored is not None:
                try:
                    key = cipher.decrypt(stored)
                except WrongKeyError:
                    log.warning(
                        "the web session key cannot be decrypted with the configured keys: "
                        "a new one is made (users sign in again)"
                    )
                    key = secrets.token_urlsafe(48)
                    stored = cipher.encrypt(key)
                else:
                    stored = cipher.rotate(stored)
                cache.set_state(conn, NAME, stored)
                return key
        try:
            key = secrets.token_urlsafe(48)
            with store.transaction() as conn:
                cache.add_state(conn, NAME, cipher.encrypt(key))
            return key
        except IntegrityError:
            continue
    raise RuntimeError("could not store the web session key")  # pragma: no cover


def rotate_session_key(conn: Connection, cipher: TokenCipher) -> bool:
    """Re-encrypt the stored session key under the newest key; False when there is none."""
    stored = cache.get_state(conn, NAME)
    if stored is None:
        return False
    cache.set_state(conn, NAME, cipher.rotate(stored))
    return True
