"""The requests a flow run sends the gateway's internal API, as typed models:
`HttpWorkerAPI` (tasks/worker_api.py) builds and sends them, the internal
routes (gateway/routes/internal.py) validate posts by them. Strict, and a
field a model does not know is refused, so a worker of another version gets
a 400 naming the field rather than a post half understood.

In tasks/ because both sides import it: the flow process never imports the
gateway."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# How a run ends a batch: a key of tasks/ledger.py OUTCOMES (`BatchLedger.finalize`).
OutcomeName = Literal["completed", "cancelled", "expired", "budget_exceeded"]
Count = Annotated[int, Field(ge=0)]


class WorkerMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Claim(WorkerMessage):
    """Take a batch's lease (`/claim`)."""

    flow_run_id: str | None = None


class Renewal(WorkerMessage):
    """A heartbeat on the lease (`/renew`); `claims`: the chunk claims too."""

    lease_token: str
    claims: bool = False


class Release(WorkerMessage):
    """Give the lease back (`/release`)."""

    lease_token: str


class ChunkClaim(WorkerMessage):
    """Take the next free chunk (`/chunks/claim`): a helper run, or the
    batch's own run with its lease."""

    flow_run_id: str | None = None
    lease_token: str | None = None


class ClaimsRenewal(WorkerMessage):
    """A helper run's heartbeat on its chunk claims (`/chunks/renew`)."""

    chunk_tokens: list[str] = []


class PlannedChunk(WorkerMessage):
    """One chunk of the plan: where its lines are in the input file."""

    index: Count
    start_offset: Count
    end_offset: Count
    first_line: Count
    line_count: Count


class Plan(WorkerMessage):
    """Validation's result (`/plan`): the chunks, or the errors that fail the batch."""

    lease_token: str
    total: Count
    chunks: list[PlannedChunk]
    # Each as OpenAI's batch error object: code, message, param, line.
    errors: list[dict[str, str | int | None]]
    models: list[str] = []


class ChunkResult(WorkerMessage):
    """A finished chunk, the checkpoint (`/chunks/{index}`): its output and
    error lines as text, counts, usage and what served each line."""

    lease_token: str
    output: str
    errors: str
    completed: Count
    failed: Count
    # Any below: JSON objects whose shapes belong to their readers (usage
    # sums in tasks/usage.py, meta in tasks/execute.py, the metrics report
    # in tasks/run_metrics.py, which checks it all through before use).
    usage: dict[str, Any] | None = None
    model: str | None = None
    meta: list[dict[str, Any]] | None = None
    usage_rows: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    stopped: Count = 0


class Finalize(WorkerMessage):
    """End the batch (`/finalize`): write its files, set its status."""

    lease_token: str
    outcome: OutcomeName = "completed"


class Failure(WorkerMessage):
    """Fail the batch with these errors (`/fail`)."""

    lease_token: str
    errors: list[dict[str, str | int | None]] = []
