"""The DuckDB metadata store: keys, files, batches, chunks, webhooks,
providers, results, budgets, text stats, batch controls - one repository per
area (storage/repositories/) over one connection and its transactions
(storage/database.py).

One object, not one per area: a checkpoint or a terminal status change
writes several areas' tables in one transaction on the one connection, and
callers hold a single store.
"""

from __future__ import annotations

from pathlib import Path

from storage import secrets as provider_secrets
from storage.database import SCHEMA_VERSION, migrations, now, rewrite_database
from storage.repositories.api_keys import ApiKeys
from storage.repositories.batch_controls import BatchControls
from storage.repositories.batches import Batches
from storage.repositories.budgets import Budgets
from storage.repositories.chunks import PLAN_ROWS_PER_INSERT, Chunks
from storage.repositories.files import Files
from storage.repositories.providers import Providers
from storage.repositories.results import Results
from storage.repositories.text_stats import TextStats

__all__ = [
    "PLAN_ROWS_PER_INSERT",
    "SCHEMA_VERSION",
    "MetadataStore",
    "migrations",
    "now",
    "rewrite_database",
]


class MetadataStore(
    ApiKeys, Files, Batches, Chunks, Providers, Results, Budgets, TextStats, BatchControls
):
    def __init__(
        self, path: Path | str, secret_keys: provider_secrets.SecretKeys | None = None
    ) -> None:
        """`secret_keys` encrypt provider keys at rest; a store opened without
        them (a tool that touches no provider) cannot read or write providers."""
        super().__init__(path, secret_keys)
        if secret_keys is not None and self._seal_provider_keys():
            self._compact()
