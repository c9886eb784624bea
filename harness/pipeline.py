"""The batch engine in one process, for tests of the pipeline (validate ->
execute -> finalize): the in-process worker API over a real DuckDB file and
blob directory, the mock provider over real HTTP, and a chat line builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from flows.process_batch import drive_batch
from harness.lines import CHAT, chat_line
from harness.records import store_batch
from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from storage.records import BatchRecord, ProviderRecord
from storage.secrets import SecretKeys, new_key
from tasks import live_results
from tasks.ledger import BatchLedger
from tasks.settings import Settings
from tasks.upstream import UpstreamClient
from tasks.worker_api import LocalWorkerAPI


class Harness:
    def __init__(self, root: Path, mock_url: str, **settings: Any) -> None:
        self.settings = Settings(
            data_dir=root,
            chunk_size=settings.pop("chunk_size", 10),
            lease_seconds=30,
            backoff_base_seconds=0.01,
            backoff_max_seconds=0.05,
            **settings,
        )
        self.store = MetadataStore(self.settings.db_path, SecretKeys(new_key()))
        self.blobs = BlobStore(self.settings.blob_dir)
        self.ledger = BatchLedger(self.store, self.blobs, lease_seconds=30)
        self.api = LocalWorkerAPI(self.ledger, self.store)
        self.mock_url = mock_url
        self.key, _ = self.store.create_api_key("test")
        self.store.upsert_provider(
            ProviderRecord(
                name="openai",
                base_url=f"{mock_url}/v1",
                api_key="sk-mock",
                is_default=True,
                max_concurrency=16,
            )
        )
        self.store.upsert_provider(
            ProviderRecord(name="mistral", base_url=f"{mock_url}/v1", api_key="sk-mistral")
        )
        httpx.post(f"{mock_url}/stats/reset")
        httpx.post(f"{mock_url}/config", json={"latency_ms": 0, "failure_rate": 0, "rate_429": 0})

    def add_batch(self, lines: list[Any], endpoint: str = CHAT, **fields: Any) -> str:
        data = b"".join((ln if isinstance(ln, bytes) else orjson.dumps(ln)) + b"\n" for ln in lines)
        return store_batch(self.store, self.blobs, self.key.id, data, endpoint, **fields)

    async def run(self, batch_id: str) -> BatchRecord:
        async with UpstreamClient.from_settings(self.settings) as client:
            await drive_batch(self.api, client, batch_id, settings=self.settings)
        batch = self.store.get_batch(batch_id)
        assert batch is not None
        return batch

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        record = self.store.get_file(file_id)
        assert record is not None and record.purpose == "batch_output"
        return [
            orjson.loads(x) for x in self.blobs.path(record.blob_name).read_bytes().splitlines()
        ]

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.mock_url}/stats").json()

    def read_live(self, batch_id: str, after: int = 0) -> tuple[int, list[bytes]]:
        """What `GET /v1/batches/{id}/results?after=` streams now: the cursor
        to pass next and the lines (the route adds nothing but HTTP)."""
        page = live_results.results_page(self.store, batch_id, after, live_results.KINDS)
        data = b"".join(live_results.page_blocks(self.store, self.blobs, batch_id, page))
        return page.cursor, data.splitlines()

    def final_lines(self, batch: BatchRecord) -> list[bytes]:
        """The output and error files' lines, as stored."""
        return [
            line
            for file_id in (batch.output_file_id, batch.error_file_id)
            if file_id
            for line in self.blobs.path(file_id).read_bytes().splitlines()
        ]


def chat(i: int, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    """Line `req-{i}` saying "hi {i}" (the estimates' tests count its words)."""
    return chat_line(f"req-{i}", f"hi {i}", model, **extra)
