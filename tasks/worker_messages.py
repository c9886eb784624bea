"""The requests a flow run sends the gateway's internal API, as typed models:
`HttpWorkerAPI` (tasks/worker_api.py) builds and sends them, the internal
routes (gateway/routes/internal.py) validate posts by them. Strict, and a
field a model does not know is refused, so a worker of another version gets
a 400 naming the field rather than a post half understood.

In tasks/ because both sides import it: the flow process never imports the
gateway."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from storage.records import BatchStatus

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


# -- answers ------------------------------------------------------------------
# What the gateway answers a run (tasks/ledger.py builds them); JSON objects
# on the wire, typed here for both sides.


class ControlState(TypedDict):
    """A live batch's control (tasks/control_state.py): pause, a stop reason
    (the key's budget), each provider's concurrency ceiling."""

    paused: bool
    stop_reason: str | None
    ceilings: dict[str, int]


class Control(TypedDict):
    """What a run needs to know between requests; the control state only
    while the batch is live."""

    status: BatchStatus
    expires_at: int | None
    endpoint: str
    total: int
    lease_seconds: float
    paused: NotRequired[bool]
    stop_reason: NotRequired[str | None]
    ceilings: NotRequired[dict[str, int]]


class ClaimAnswer(Control):
    """`/claim`: the lease token (None for an ended batch) and how many runs
    to fan the batch out to."""

    lease_token: str | None
    fanout_runs: NotRequired[int]


class ChunkView(TypedDict):
    """A chunk as runs see it: everything but the token of whoever holds it."""

    batch_id: str
    chunk_index: int
    start_offset: int
    end_offset: int
    first_line: int
    line_count: int
    done: bool
    completed: int
    failed: int
    usage: dict[str, Any] | None  # Any: a usage object (tasks/usage.py)
    model: str | None
    done_by: str | None
    stopped: int
    claim_expires_at: float | None
    claimed_by: str | None
    # The run attaches the token it claimed the chunk with (never sent by the gateway).
    chunk_token: NotRequired[str | None]


class ChunkClaimAnswer(Control):
    """`/chunks/claim`: the chunk (None when none is free), the token that
    posts its checkpoint, and what is not done yet."""

    chunk: ChunkView | None
    chunk_token: str | None
    pending_chunks: int
    pending_lines: int


class PlanAnswer(Control):
    """What validation tells the flow run: the batch's control, and the
    models its lines ask for (the run's tags in the Prefect UI)."""

    models: NotRequired[list[str]]


class ClaimsAnswer(Control):
    """`/chunks/renew`: the chunks still held, and those under any live claim."""

    held: list[int]
    claimed: int
