"""Provider keys encrypted at rest, so a copied DuckDB file or backup holds none.

A provider's upstream key is stored as `fernet:<token>` (Fernet from the
`cryptography` package: AES-128-CBC with an HMAC-SHA256, under one 32-byte
key). The key comes from `BATCHGATE_SECRET_KEY`, or from `<data_dir>/secret_key`,
generated there owner-only on first start. Rotation writes the next key to
`secret_key.next` before the database changes and renames it over
`secret_key` after they commit; a start that finds `secret_key.next` (a
rotation cut short) can read rows under either key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storage.private import write_private_text

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

# `cryptography` is imported where a key is used, not with the metadata store:
# `batchgate run` opens a store but never seals a key, and the import was
# 6.6 MB of its resident memory.

PREFIX = "fernet:"
KEY_FILE = "secret_key"
NEXT_KEY_FILE = "secret_key.next"
GENERATE_HINT = (
    'generate one with: python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"'
)


class SecretKeyError(Exception):
    """The secret key is malformed, or a stored value does not open under it."""


@dataclass(frozen=True)
class SecretKeys:
    """The key new values are encrypted under, then any older key a value
    may still be encrypted under (an interrupted rotation)."""

    current: str
    older: tuple[str, ...] = ()
    source: str = KEY_FILE  # where `current` came from, for messages


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _fernet(key: str) -> Fernet:
    from cryptography.fernet import Fernet

    try:
        return Fernet(key.strip().encode())
    except (ValueError, TypeError):
        raise SecretKeyError(
            f"the secret key is not a Fernet key (32 url-safe base64 bytes); {GENERATE_HINT}"
        ) from None


def check_key(key: str) -> str:
    """`key` itself when it is usable, else SecretKeyError saying how to make one."""
    _fernet(key)
    return key.strip()


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def encrypt(keys: SecretKeys, clear: str) -> str:
    return PREFIX + _fernet(keys.current).encrypt(clear.encode()).decode()


def decrypt(keys: SecretKeys, stored: str) -> str:
    """The clear value of a stored one. A value without the prefix is an
    older version's clear text, returned as it is until it is re-encrypted."""
    if not is_encrypted(stored):
        return stored
    from cryptography.fernet import InvalidToken, MultiFernet

    box = MultiFernet([_fernet(k) for k in (keys.current, *keys.older)])
    try:
        return box.decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise SecretKeyError(
            f"a stored provider key does not decrypt with the secret key from {keys.source}: "
            "was the data directory copied without its secret_key file, or "
            "BATCHGATE_SECRET_KEY changed without `batchgate rotate-secret-key`?"
        ) from None


def load_or_create_keys(configured: str | None, data_dir: Path) -> tuple[SecretKeys, bool]:
    """The keys to use: `configured` (BATCHGATE_SECRET_KEY) when set, else the
    key file in the data directory, generated owner-only on first start.
    Returns (keys, created)."""
    pending = data_dir / NEXT_KEY_FILE
    older = (check_key(pending.read_text()),) if pending.exists() else ()
    if configured:
        return SecretKeys(check_key(configured), older, "BATCHGATE_SECRET_KEY"), False
    path = data_dir / KEY_FILE
    if path.exists():
        return SecretKeys(check_key(path.read_text()), older, str(path)), False
    key = new_key()
    write_private_text(path, key)
    return SecretKeys(key, older, str(path)), True


def rotated(keys: SecretKeys, next_key: str) -> SecretKeys:
    """The keys once every value is re-encrypted under `next_key`."""
    return SecretKeys(check_key(next_key), (), keys.source)


def reencrypt(old: SecretKeys, new: SecretKeys, values: Sequence[str]) -> list[str]:
    """Every value decrypted under `old` and encrypted under `new`."""
    return [encrypt(new, decrypt(old, v)) for v in values]
