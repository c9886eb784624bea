"""Bearer-key authentication for /v1, /admin and the internal worker API.

Keys are looked up by their SHA-256; the clear key exists only in the
client's hands. The admin key and internal token live in settings or,
when unset, are generated once into the data directory (mode 0600).
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from starlette.requests import Request

from gateway.errors import APIError
from gateway.state import gateway_state
from storage.private import make_private_dir, write_private_text
from storage.records import ApiKeyRecord


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_key(request: Request) -> ApiKeyRecord:
    """The caller's API key record, or 401 in the error envelope."""
    token = bearer_token(request)
    if token is None:
        raise APIError(
            401,
            "You didn't provide an API key. Provide it in the Authorization "
            "header as 'Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    record = gateway_state(request).store.find_api_key(token)
    if record is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return record


def _require_secret(request: Request, secret: str, what: str) -> None:
    token = bearer_token(request)
    if token is None or not hmac.compare_digest(token.encode(), secret.encode()):
        raise APIError(401, f"This route needs the {what}.", code="invalid_api_key")


def require_admin(request: Request) -> None:
    _require_secret(request, gateway_state(request).admin_key, "admin key")


def require_internal(request: Request) -> None:
    _require_secret(request, gateway_state(request).internal_token, "internal token")


def load_or_create_secret(path: Path) -> tuple[str, bool]:
    """Read a secret kept in the data directory, creating it on first start.
    Returns (secret, created) so the caller can print a new one once."""
    if path.exists():
        return path.read_text().strip(), False
    make_private_dir(path.parent)
    secret = f"bg-{secrets.token_urlsafe(32)}"
    write_private_text(path, secret)
    return secret, True
