"""A create-batch request as the engine sees it, and the limits its fields
obey (checked by the gateway's `BatchCreate` model, gateway/models/batches.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from storage.records import BatchEndpoint, CompletionWindow

ENDPOINTS: frozenset[BatchEndpoint] = frozenset(get_args(BatchEndpoint))
COMPLETION_WINDOWS: frozenset[CompletionWindow] = frozenset(get_args(CompletionWindow))
# A name as an endpoint (the dict types the lookup: str in, BatchEndpoint out).
ENDPOINT_NAMED: dict[str, BatchEndpoint] = {name: name for name in ENDPOINTS}
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
OUTPUT_EXPIRY_RANGE = (3600, 2_592_000)


@dataclass(frozen=True)
class BatchRequest:
    input_file_id: str
    endpoint: BatchEndpoint
    completion_window: CompletionWindow
    metadata: dict[str, str] | None
    output_expires_after_seconds: int | None
