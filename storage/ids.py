"""Identifiers in the shapes OpenAI uses, and API key material."""

from __future__ import annotations

import hashlib
import secrets


def _token(nbytes: int = 12) -> str:
    return secrets.token_hex(nbytes)


def new_file_id() -> str:
    return f"file-{_token()}"


def new_batch_id() -> str:
    return f"batch_{_token()}"


def new_request_id() -> str:
    return f"batch_req_{_token()}"


def new_key_id() -> str:
    return f"key_{_token(8)}"


def new_api_key() -> str:
    """A bearer key; high entropy, so a plain SHA-256 is a safe stored form."""
    return f"bg-{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
