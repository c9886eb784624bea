"""API keys: only their hashes are stored; a clear key is shown once."""

from __future__ import annotations

from storage import ids
from storage.database import (
    Database,
    now,
)
from storage.records import (
    ApiKeyRecord,
)


class ApiKeys(Database):
    """Keys by hash; live keys are remembered, so auth reads no row per request."""

    def create_api_key(self, name: str) -> tuple[ApiKeyRecord, str]:
        """Store a new key's hash; the clear key is returned once and never kept."""
        clear = ids.new_api_key()
        record = ApiKeyRecord(
            id=ids.new_key_id(), name=name, key_hash=ids.hash_key(clear), created_at=now()
        )
        self._insert("api_keys", record)
        return record, clear

    def find_api_key(self, clear_key: str) -> ApiKeyRecord | None:
        """The live key with this clear text. Every request asks, so live keys
        are remembered by hash; revoking is a write to `api_keys`, so a revoked
        key stops working at once."""
        key_hash = ids.hash_key(clear_key)
        return self._cache.remembered(
            ("api_key", key_hash),
            ["api_keys"],
            lambda: self._first(
                "api_keys", ApiKeyRecord, "key_hash = ? AND revoked_at IS NULL", [key_hash]
            ),
            at=now(),
        )

    def list_api_keys(self) -> list[ApiKeyRecord]:
        return self._fetch(
            "api_keys", ApiKeyRecord, "revoked_at IS NULL", [], "ORDER BY created_at, id"
        )

    def revoke_api_key(self, key_id: str) -> bool:
        return bool(
            self._update(
                "api_keys", "id = ? AND revoked_at IS NULL", [key_id], {"revoked_at": now()}
            )
        )
