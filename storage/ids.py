"""Identifiers in the shapes OpenAI uses, and API key material."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import secrets


def _token(nbytes: int = 12) -> str:
    """Random hex from the OS, for ids of stored objects (files, batches,
    keys). `os.urandom` is what `secrets.token_hex` calls, minus two Python
    layers."""
    return os.urandom(nbytes).hex()


def new_file_id() -> str:
    return f"file-{_token()}"


def new_batch_id() -> str:
    return f"batch_{_token()}"


def _line_token() -> str:
    """96 random bits as hex for the ids made per batch line, from the
    `random` module's generator instead of the OS: a `getrandom` call per id
    was two syscalls a line, which on a loaded machine cost far more than
    the 0.7 us they take on an idle one. These ids name lines and HTTP
    requests; they guard nothing. Fork-safe: `random` reseeds itself from
    the OS in every forked child (os.register_at_fork), so forked worker
    processes never hand out the same sequence."""
    return f"{random.getrandbits(96):024x}"


def new_request_id() -> str:
    """The `id` of one output- or error-file line (`batch_req_…`)."""
    return f"batch_req_{_line_token()}"


def new_http_request_id() -> str:
    """`req_…`: one HTTP request's id, the gateway's `x-request-id` answer
    header and each upstream attempt's `X-Client-Request-Id`. Random, not a
    counter, so forked worker processes never hand out the same one."""
    return f"req_{_line_token()}"


def new_key_id() -> str:
    return f"key_{_token(8)}"


def new_api_key() -> str:
    """A bearer key; high entropy, so a plain SHA-256 is a safe stored form."""
    return f"bg-{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_event_id() -> str:
    """`evt_…`: one webhook event (OpenAI's shape); also its `webhook-id`."""
    return f"evt_{_token()}"


def new_webhook_endpoint_id() -> str:
    return f"we_{_token(8)}"


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
