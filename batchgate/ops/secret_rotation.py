"""`batchgate rotate-secret-key`: re-encrypt every stored provider key under a new key.

It runs with the gateway stopped: DuckDB lets one process open the file, and
the gateway holds the key it opened the rows with, so rotating under a
running gateway would leave it unable to read what it wrote next.

Where the key lives decides the steps:
- `<data_dir>/secret_key` (no BATCHGATE_SECRET_KEY): a new key is written to
  `secret_key.next`, the rows are re-encrypted in one transaction, then the
  file is renamed over `secret_key`. Run again after a crash, it finishes
  the same rotation (both keys are tried on the rows meanwhile).
- BATCHGATE_SECRET_KEY: the operator generates the new key and passes it as
  BATCHGATE_NEW_SECRET_KEY; afterwards BATCHGATE_SECRET_KEY must be set to it.
  Run again with both still set, it is a no-op re-encryption under the new key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from storage.metadata import MetadataStore
from storage.private import write_private_text
from storage.secrets import (
    GENERATE_HINT,
    KEY_FILE,
    NEXT_KEY_FILE,
    SecretKeys,
    check_key,
    load_or_create_keys,
    new_key,
    rotated,
)
from tasks.settings import Settings


class RotationError(Exception):
    """Rotation could not start; nothing was changed."""


@dataclass(frozen=True)
class Rotation:
    re_encrypted: int
    next_step: str  # what the operator must do now


def _next_key(settings: Settings, keys: SecretKeys) -> str:
    """The key to rotate to, written where a crash cannot lose it first."""
    if settings.secret_key:
        if not settings.new_secret_key:
            raise RotationError(
                "BATCHGATE_SECRET_KEY is set, so the new key must come from you: set "
                f"BATCHGATE_NEW_SECRET_KEY to a new key ({GENERATE_HINT}) and run again"
            )
        return check_key(settings.new_secret_key)
    pending = settings.data_dir / NEXT_KEY_FILE
    if keys.older:  # a rotation cut short: finish it under its key
        return pending.read_text().strip()
    key = new_key()
    write_private_text(pending, key)
    return key


def rotate_secret_key(settings: Settings) -> Rotation:
    if not settings.db_path.exists():
        raise RotationError(f"no database at {settings.db_path}")
    keys, _ = load_or_create_keys(settings.secret_key, settings.data_dir)
    if settings.secret_key and settings.new_secret_key:
        # Rows may already be under the new key (a second run).
        keys = SecretKeys(keys.current, (*keys.older, check_key(settings.new_secret_key)))
    # A running gateway holds the file: DatabaseInUse (storage/db_lock.py),
    # before anything is written.
    store = MetadataStore(settings.db_path, keys)
    try:
        count = store.rotate_provider_keys(rotated(keys, _next_key(settings, keys)))
    finally:
        store.close()
    if settings.secret_key:
        step = (
            "set BATCHGATE_SECRET_KEY to the value of BATCHGATE_NEW_SECRET_KEY (and unset "
            "BATCHGATE_NEW_SECRET_KEY) before starting the gateway: the old key no longer "
            "opens the stored provider keys"
        )
    else:
        os.replace(settings.data_dir / NEXT_KEY_FILE, settings.data_dir / KEY_FILE)
        step = (
            f"the new key is in {settings.data_dir / KEY_FILE}; back it up with the data "
            "directory and start the gateway as before"
        )
    return Rotation(count, step)
