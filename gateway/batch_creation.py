"""Recording a new batch: the checks a create (and a retry) makes before a
batch exists, and the row it stores. Shared by the batch and results routes;
blocking, so routes run it in the thread pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from gateway.errors import APIError, bad_request, not_found
from gateway.loops.reconciler import launch_reserved_until
from storage import ids
from storage.metadata import now
from storage.records import ApiKeyRecord, BatchRecord, FileRecord
from tasks.batch_rules import BatchRequest
from tasks.control_state import budget_state

if TYPE_CHECKING:
    from gateway.state import GatewayState


def first_model(state: GatewayState, blob_name: str) -> str | None:
    """The model of the input's first line, for the flow run's tags (best effort)."""
    try:
        with state.blobs.open(blob_name) as handle:
            first = handle.readline(1 << 20)
        body = orjson.loads(first).get("body") or {}
        model = body.get("model")
        return model if isinstance(model, str) else None
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None


def batch_input(state: GatewayState, key: ApiKeyRecord, file_id: str) -> FileRecord:
    """The caller's `batch` file named by `input_file_id`, or the 404/400."""
    input_file = state.store.get_file(file_id, key.id)
    if input_file is None:
        raise not_found("File", file_id, param="input_file_id")
    if input_file.purpose != "batch":
        raise bad_request(
            f"File {input_file.id} has purpose '{input_file.purpose}'; a batch "
            "needs a file uploaded with purpose 'batch'.",
            param="input_file_id",
        )
    return input_file


def refuse_over_budget(state: GatewayState, key: ApiKeyRecord) -> None:
    """429 `insufficient_quota` (OpenAI's code and type) once the key has
    spent its budget for the period; `x-should-retry: false` because the
    SDK's automatic retries cannot help before the period ends."""
    budget = budget_state(state.store, key.id)
    if budget is not None and budget["exceeded"]:
        raise APIError(
            429,
            "You exceeded your current quota: this API key has reached its budget for the period.",
            code="insufficient_quota",
            type_="insufficient_quota",
            headers={"x-should-retry": "false"},
        )


def record_batch(state: GatewayState, key: ApiKeyRecord, parsed: BatchRequest) -> BatchRecord:
    """Check the input file and store the new batch (blocking: runs in a thread)."""
    input_file = batch_input(state, key, parsed.input_file_id)
    refuse_over_budget(state, key)
    created = now()
    batch = BatchRecord(
        id=ids.new_batch_id(),
        api_key_id=key.id,
        endpoint=parsed.endpoint,
        input_file_id=input_file.id,
        completion_window=parsed.completion_window,
        status="validating",
        created_at=created,
        expires_at=created + state.settings.completion_window_seconds,
        metadata=parsed.metadata,
        output_expires_after_seconds=parsed.output_expires_after_seconds,
        output_expires_after_anchor="created_at" if parsed.output_expires_after_seconds else None,
        model=first_model(state, input_file.blob_name),
        # Stored already reserved for the run `create_batch` starts next: a
        # reconciler pass between the insert and a later reservation would
        # start a second flow run for the same batch.
        lease_expires_at=launch_reserved_until(state.settings),
    )
    state.store.insert_batch(batch)
    return batch
