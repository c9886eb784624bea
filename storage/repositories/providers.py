"""Provider connections. `providers.api_key` holds `fernet:<token>`
(storage/secrets.py); the clear key exists only in memory, on its way to the
provider."""

from __future__ import annotations

import dataclasses

import duckdb

from storage import secrets as provider_secrets
from storage.database import (
    Database,
    columns_of,
    encode_row,
)
from storage.records import (
    ProviderRecord,
)


class Providers(Database):
    """Provider connections, their keys sealed at rest and opened on read."""

    def _stored_provider_keys(self, conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
        return conn.execute("SELECT name, api_key FROM providers ORDER BY name").fetchall()

    def _rewrite_provider_keys(
        self,
        conn: duckdb.DuckDBPyConnection,
        names: list[str],
        stored: list[str],
    ) -> None:
        for name, value in zip(names, stored, strict=True):
            conn.execute("UPDATE providers SET api_key = ? WHERE name = ?", [value, name])

    def _seal_provider_keys(self) -> bool:
        """At open: encrypt the clear keys an older version stored, and fail
        now, with a message, if a stored key does not open under our keys
        (better than every upstream call failing with 401 later). True when
        a clear key was replaced (the file then needs a rewrite)."""
        keys = self._keys()
        with self.transaction(writes=["providers"]) as conn:
            rows = self._stored_provider_keys(conn)
            for _, value in rows:
                provider_secrets.decrypt(keys, value)
            clear = [(n, v) for n, v in rows if not provider_secrets.is_encrypted(v)]
            sealed = provider_secrets.reencrypt(keys, keys, [v for _, v in clear])
            self._rewrite_provider_keys(conn, [n for n, _ in clear], sealed)
        return bool(clear)

    def rotate_provider_keys(self, new: provider_secrets.SecretKeys) -> int:
        """Re-encrypt every stored provider key under `new`, all in one
        transaction (a failure leaves every row under the old key), then
        rewrite the file so no old-key value stays in its free blocks.
        Returns how many keys were re-encrypted."""
        old = self._keys()
        with self.transaction(writes=None) as conn:
            rows = self._stored_provider_keys(conn)
            sealed = provider_secrets.reencrypt(old, new, [v for _, v in rows])
            self._rewrite_provider_keys(conn, [n for n, _ in rows], sealed)
            # Webhook signing secrets are sealed under the same key.
            hooks = conn.execute("SELECT id, secret FROM webhook_endpoints").fetchall()
            resealed = provider_secrets.reencrypt(old, new, [v for _, v in hooks])
            for (hook_id, _), value in zip(hooks, resealed, strict=True):
                conn.execute(
                    "UPDATE webhook_endpoints SET secret = ? WHERE id = ?", [value, hook_id]
                )
        self._secret_keys = new
        self._compact()
        return len(rows)

    def _opened(self, record: ProviderRecord) -> ProviderRecord:
        return dataclasses.replace(
            record, api_key=provider_secrets.decrypt(self._keys(), record.api_key)
        )

    def upsert_provider(self, record: ProviderRecord) -> ProviderRecord:
        sealed = provider_secrets.encrypt(self._keys(), record.api_key)
        with self.transaction(writes=["providers"]) as conn:
            if record.is_default:
                conn.execute(
                    "UPDATE providers SET is_default = FALSE WHERE name <> ?", [record.name]
                )
            conn.execute("DELETE FROM providers WHERE name = ?", [record.name])
            values = encode_row(
                "providers", {c: getattr(record, c) for c in columns_of(ProviderRecord)}
            )
            values["api_key"] = sealed
            conn.execute(
                f"INSERT INTO providers ({', '.join(values)}) "
                f"VALUES ({', '.join('?' for _ in values)})",
                list(values.values()),
            )
        return record

    def list_providers(self) -> list[ProviderRecord]:
        found = self._fetch("providers", ProviderRecord, "TRUE", [], "ORDER BY name")
        return [self._opened(r) for r in found]

    def get_provider(self, name: str) -> ProviderRecord | None:
        found = self._first("providers", ProviderRecord, "name = ?", [name])
        return None if found is None else self._opened(found)

    def delete_provider(self, name: str) -> bool:
        return bool(
            self._write("DELETE FROM providers WHERE name = ? RETURNING 1", [name], ["providers"])
        )

    def provider_ceilings(self) -> dict[str, int]:
        """Each provider's `max_concurrency`, without opening its key."""
        rows = self.query("SELECT name, max_concurrency FROM providers")
        return {r[0]: int(r[1]) for r in rows}

    def set_provider_ceiling(self, name: str, max_concurrency: int) -> bool:
        rows = self._write(
            "UPDATE providers SET max_concurrency = ? WHERE name = ? RETURNING 1",
            [max_concurrency, name],
            ["providers"],
        )
        return bool(rows)
