"""Plain records for what the metadata store holds, and the Literals their
fields take. What a client sees of them is built in gateway/models/objects.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# A batch's status, as OpenAI names them; tasks/status.py holds the moves.
BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL_STATUSES: frozenset[BatchStatus] = frozenset(
    {"completed", "failed", "expired", "cancelled"}
)
LIVE_STATUSES: frozenset[BatchStatus] = frozenset(
    {"validating", "in_progress", "finalizing", "cancelling"}
)

# What a batch's lines may call (OpenAI's batch endpoints), and its window.
BatchEndpoint = Literal[
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/responses",
    "/v1/moderations",
]
CompletionWindow = Literal["24h"]

# What a file is for: the uploads' purposes and the one of the files batches write.
FilePurpose = Literal[
    "assistants", "batch", "batch_output", "evals", "fine-tune", "user_data", "vision"
]

# The counts of a `chunk_usage` row (storage/schema.sql, migration 3): what
# /admin/usage sums and the per-batch summary reports per model and provider.
USAGE_COUNTS = (
    "lines",
    "succeeded",
    "failed",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
)
# The webhook event each terminal status sends (OpenAI's event types).
WebhookEvent = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
WEBHOOK_EVENTS: dict[BatchStatus, WebhookEvent] = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    key_hash: str
    created_at: int
    revoked_at: int | None = None


@dataclass(frozen=True)
class FileRecord:
    id: str
    api_key_id: str | None
    filename: str
    purpose: FilePurpose
    bytes: int
    created_at: int
    expires_at: int | None
    deleted_at: int | None
    blob_name: str
    mime_type: str | None = None
    # Place in creation order, given by the store when the row is inserted:
    # lists sort by (created_at, seq), as `created_at` ties within a second.
    # Internal: the API objects never show it.
    seq: int | None = None


def file_is_live(record: FileRecord, at: int) -> bool:
    """Not deleted and not past its own expiry at `at` (epoch seconds)."""
    return record.deleted_at is None and (record.expires_at is None or record.expires_at > at)


@dataclass(frozen=True)
class ProviderRecord:
    name: str
    base_url: str
    api_key: str
    is_active: bool = True
    max_concurrency: int = 64
    models: list[str] | None = None
    is_default: bool = False
    created_at: int = 0


@dataclass(frozen=True)
class WebhookEndpointRecord:
    """A registered receiver. `secret` is sealed in the database and clear
    only in memory, on its way to a signature; `api_key_id` None: global."""

    id: str
    url: str
    events: list[WebhookEvent]
    api_key_id: str | None
    secret: str
    created_at: int
    deleted_at: int | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """One outbox row due for sending, with what sending it needs."""

    event_id: str
    endpoint_id: str
    type: str
    batch_id: str
    created_at: int
    attempts: int
    url: str
    secret: str


@dataclass(frozen=True)
class ChunkRecord:
    batch_id: str
    chunk_index: int
    start_offset: int
    end_offset: int
    first_line: int
    line_count: int
    done: bool = False
    completed: int = 0
    failed: int = 0
    usage: dict[str, Any] | None = None
    model: str | None = None
    # The chunk claim (migration 6, tasks/ledger.py `claim_chunk`): who holds
    # the chunk until when, and which run's checkpoint was accepted.
    claim_token: str | None = None
    claim_expires_at: float | None = None
    claimed_by: str | None = None
    done_by: str | None = None
    stopped: int = 0


@dataclass(frozen=True)
class BatchRecord:
    id: str
    api_key_id: str | None
    endpoint: BatchEndpoint
    input_file_id: str
    completion_window: CompletionWindow
    status: BatchStatus
    created_at: int
    expires_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    metadata: dict[str, str] | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None
    output_expires_after_seconds: int | None = None
    output_expires_after_anchor: str | None = None
    flow_run_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    seq: int | None = None  # place in creation order, as FileRecord.seq
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


# The periods a key budget resets over (tasks/budgets.py does the arithmetic).
BudgetPeriod = Literal["day", "month"]


@dataclass(frozen=True)
class KeyBudget:
    """A key's limits per period; None means no limit of that kind."""

    api_key_id: str
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    budget_period: BudgetPeriod | None = None  # None: the key's lifetime

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost_usd is not None


@dataclass(frozen=True)
class Spend:
    tokens: int = 0
    cost_usd: float = 0.0
