"""The batch orchestration as a plain coroutine: validate -> execute (chunked)
-> finalize, over a `WorkerAPI` and a set of `Steps`.

With `fanout_runs` above 1 (the gateway's `BATCHGATE_FANOUT_RUNS`, told at
claim) a batch of several chunks is worked by more than one flow run: the
batch's own run starts helper runs (`Steps.fan_out`), and it and the helpers
(`help_batch`) take chunks one at a time through chunk claims
(`work_claims`); the batch's run alone validates and finalizes.

It lives in `tasks/` and imports no Prefect: the `process-batch` flow
(flows/process_batch.py) runs it with each step wrapped as a Prefect task,
`batchgate run` (tasks/local_run.py) runs it in-process with plain steps over
a local state directory, and unit tests run it against the in-process worker
API. Importing Prefect costs seconds a one-shot command should not pay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from typing_extensions import TypedDict, TypeIs

from storage.records import ProviderRecord
from tasks.crashpoints import crash_point
from tasks.execute import execute_lines, parse_chunk
from tasks.ledger import InputUnavailable, LeaseLost
from tasks.line_journal import Journals
from tasks.run_control import RunControl
from tasks.settings import Settings
from tasks.summary_report import LineProgress
from tasks.upstream import UpstreamClient
from tasks.validate import validate_jsonl
from tasks.worker_api import WorkerAPI
from tasks.worker_messages import ChunkClaimAnswer, ChunkView, Control, OutcomeName, PlanAnswer

log = logging.getLogger("batchgate.worker")


# -- the steps, as plain functions ---------------------------------------------


def validate_input(
    api: WorkerAPI, batch_id: str, token: str, endpoint: str, chunk_size: int, max_lines: int
) -> PlanAnswer:
    """Stream the input through the validator and record the plan (or the errors)."""
    try:
        with api.input_blocks(batch_id) as blocks:
            result = validate_jsonl(blocks, endpoint, chunk_size=chunk_size, max_lines=max_lines)
    except InputUnavailable as exc:
        api.fail(
            batch_id,
            token,
            [
                {
                    "code": "invalid_request",
                    "message": str(exc),
                    "param": "input_file_id",
                    "line": None,
                }
            ],
        )
        return {
            "status": "failed",
            "endpoint": endpoint,
            "expires_at": None,
            "total": 0,
            "lease_seconds": 0.0,
        }
    crash_point("validate:before_plan")
    control = api.save_plan(
        batch_id,
        token,
        total=result.total,
        chunks=[asdict(c) for c in result.chunks],
        errors=[e.as_dict() for e in result.errors],
        models=result.models,
    )
    return {**control, "models": list(result.models)}  # for the flow run's model tags


async def run_chunk(
    api: WorkerAPI,
    client: UpstreamClient,
    control: RunControl,
    providers: Sequence[ProviderRecord],
    chunk: ChunkView,
    *,
    journals: Journals | None = None,
) -> Control | Refused:
    """Execute one chunk and post its checkpoint; returns the batch's control.

    With `journals` (`batchgate run`), the chunk's finished lines are kept
    on disk as they finish and an earlier run's are not sent again
    (tasks/line_journal.py); the caller discards a journal once its chunk
    is recorded."""
    index = chunk["chunk_index"]
    data = await asyncio.to_thread(api.chunk_input, control.batch_id, index)
    # Workers per provider follow the ceiling as it is now (an admin may have raised it).
    providers = [
        dataclasses.replace(p, max_concurrency=control.ceilings[p.name])
        if control.ceilings.get(p.name, p.max_concurrency) != p.max_concurrency
        else p
        for p in providers
    ]
    journal = journals.open(index) if journals is not None else None
    try:
        result = await execute_lines(
            parse_chunk(data),
            control.endpoint,
            providers,
            client,
            lambda: control.reason,
            gate=control.gate,
            journal=journal,
            priority=index,
        )
    finally:
        if journal is not None:
            journal.close()
    control.stopped_lines += result.stopped
    crash_point("execute:before_post")
    # The client's counts since its last post go with this checkpoint; the
    # gateway adds them once it accepts it (tasks/run_metrics.py).
    post = {**result.as_post(), "metrics": client.report_metrics(), "stopped": result.stopped}
    # A claimed chunk posts with its claim token (the batch's own run
    # claims with its lease token, so that is the same token for it).
    token = chunk.get("chunk_token") or control.token
    try:
        return await asyncio.to_thread(api.record_chunk, control.batch_id, token, index, **post)
    except LeaseLost:
        if token == control.token:
            raise
        # The claim lapsed and another run took the chunk: its post counts, not this one.
        log.warning("chunk %s of %s was taken over by another run", index, control.batch_id)
        return REFUSED


class Refused(TypedDict):
    """`run_chunk`'s answer for a claimed chunk whose checkpoint was refused."""

    chunk_refused: Literal[True]


REFUSED: Refused = {"chunk_refused": True}


def refused(answer: Control | Refused) -> TypeIs[Refused]:
    return "chunk_refused" in answer


# How often the batch's run asks again while helpers hold the last chunks:
# a heartbeat (5 s) here added up to 5 s to the end of every fanned-out batch.
WAIT_POLL_SECONDS = 0.5


def finalize_batch(
    api: WorkerAPI, batch_id: str, token: str, outcome: OutcomeName
) -> dict[str, Any]:
    return api.finalize(batch_id, token, outcome)


async def _no_progress(done: int, total: int) -> None:
    return None


async def _no_summary(batch: dict[str, Any]) -> None:
    return None


async def _no_note(text: str, paused: bool) -> None:
    return None


async def _no_fan_out(helpers: int) -> None:
    return None


@dataclass
class Steps:
    validate: Callable[..., PlanAnswer] = validate_input
    execute: Callable[..., Awaitable[Control | Refused]] = run_chunk
    finalize: Callable[..., dict[str, Any]] = finalize_batch
    progress: Callable[[int, int], Awaitable[None]] = _no_progress
    summary: Callable[[dict[str, Any]], Awaitable[None]] = _no_summary
    # A pause or resume, for the flow run's log and its progress artifact.
    control_note: Callable[[str, bool], Coroutine[Any, Any, None]] = _no_note
    # Lines done of the batch, kept up to date for `progress` to describe.
    lines: LineProgress | None = None
    # Start this many helper runs for the batch (flows/process_chunks.py);
    # without it (`batchgate run`, unit tests) the batch's run works alone.
    fan_out: Callable[[int], Awaitable[None]] = _no_fan_out


OUTCOME_OF_REASON: dict[str | None, OutcomeName] = {
    None: "completed",
    "cancelled": "cancelled",
    "expired": "expired",
    "budget_exceeded": "budget_exceeded",
}


async def drive_batch(
    api: WorkerAPI,
    client: UpstreamClient,
    batch_id: str,
    *,
    settings: Settings,
    steps: Steps | None = None,
    flow_run_id: str | None = None,
    stop: Callable[[], str | None] | None = None,
) -> str:
    """Take the batch, bring it to a terminal status, return that status.

    Resumes where the checkpoints say: a batch already in progress skips done
    chunks; one interrupted in finalizing goes straight to finalize.

    `stop` may give a stop reason from outside (see `RunControl`); with
    "interrupted" the run stops sending and returns without finalizing, so
    a later run resumes from the checkpoints."""
    steps = steps or Steps()
    try:
        claim = await asyncio.to_thread(api.claim, batch_id, flow_run_id)
    except LeaseLost:
        log.info("batch %s is held by another run", batch_id)
        return "skipped"
    token = claim.get("lease_token")
    if token is None:
        return str(claim["status"])
    crash_point("run:after_claim")
    fanout = max(1, int(claim.get("fanout_runs") or 1))
    notes: set[asyncio.Task[None]] = set()

    def on_pause(paused: bool) -> None:
        text = (
            f"batch {batch_id} paused: no new upstream requests until it is resumed"
            if paused
            else f"batch {batch_id} resumed"
        )
        task = asyncio.get_running_loop().create_task(steps.control_note(text, paused))
        notes.add(task)
        task.add_done_callback(notes.discard)

    control = RunControl(
        api,
        batch_id,
        token,
        claim,
        heartbeat_seconds=settings.heartbeat_seconds,
        on_ceilings=client.set_ceilings,
        on_pause=on_pause,
        stop=stop,
        # Shared chunks: the heartbeat renews this run's chunk claims with its lease.
        renew=(lambda: api.renew(batch_id, token, claims=True)) if fanout > 1 else None,
    )
    async with control.heartbeat():
        try:
            return await _drive(api, client, control, settings, steps, fanout, flow_run_id)
        except LeaseLost:
            return "lease_lost"


# The smallest chunk fan-out makes: below it a checkpoint's fixed cost
# (a claim, a post, a DuckDB commit) weighs more than the tail it saves.
MIN_SHARED_CHUNK = 50


def shared_chunk_size(chunk_size: int, fanout: int) -> int:
    """The chunk size of a batch worked by `fanout` runs: `chunk_size / fanout`.

    The last chunks of a batch leave the runs without one idle; with N runs
    and whole-size chunks that tail was up to one chunk's time for N - 1 of
    them (measured on three hosts: 2.37 x one host's throughput where 3 x
    was the ideal). N times smaller chunks keep the tail as short as a single
    run's, for N times as many (small) checkpoints."""
    if fanout <= 1:
        return chunk_size
    return max(min(chunk_size, MIN_SHARED_CHUNK), -(-chunk_size // fanout))


async def _drive(
    api: WorkerAPI,
    client: UpstreamClient,
    control: RunControl,
    settings: Settings,
    steps: Steps,
    fanout: int = 1,
    flow_run_id: str | None = None,
) -> str:
    batch_id, token = control.batch_id, control.token
    chunks = await asyncio.to_thread(api.chunks, batch_id)
    if control.status == "validating" or (control.status == "cancelling" and not chunks):
        control.update(
            steps.validate(
                api,
                batch_id,
                token,
                control.endpoint,
                shared_chunk_size(settings.chunk_size, fanout),
                settings.max_batch_lines,
            )
        )
        crash_point("validate:after_plan")
        if control.status == "failed":
            return "failed"
        chunks = await asyncio.to_thread(api.chunks, batch_id)
    if control.status in {"in_progress", "validating"}:
        if fanout > 1 and sum(not c["done"] for c in chunks) > 1:
            await _execute_shared(
                api, client, control, settings, steps, chunks, fanout, flow_run_id
            )
        else:
            await _execute_all(api, client, control, settings, steps, chunks)
    if control.reason in {"lease_lost", "ended_elsewhere", "interrupted"}:
        return control.status
    outcome: OutcomeName = OUTCOME_OF_REASON.get(control.reason, "completed")
    if outcome == "budget_exceeded" and not control.stopped_lines:
        # The last chunks' spend reached the budget, but nothing was left
        # unsent (by this run, or a helper run): the batch is complete, not stopped.
        found = await asyncio.to_thread(api.chunks, batch_id)
        stopped = any(not c["done"] or c.get("stopped") for c in found)
        outcome = "budget_exceeded" if stopped else "completed"
    crash_point("finalize:before")
    batch = steps.finalize(api, batch_id, token, outcome)
    crash_point("finalize:after")
    await steps.summary(batch)
    return str(batch["status"])


async def _execute_all(
    api: WorkerAPI,
    client: UpstreamClient,
    control: RunControl,
    settings: Settings,
    steps: Steps,
    chunks: list[ChunkView],
) -> None:
    providers = await asyncio.to_thread(api.providers)
    pending = [c for c in chunks if not c["done"]]
    done = len(chunks) - len(pending)
    progress, lines = _progress_of(steps, chunks)
    window = asyncio.Semaphore(max(1, settings.chunk_parallelism))

    async def one(chunk: ChunkView) -> None:
        nonlocal done
        async with window:
            await control.gate()  # a paused batch starts no chunk
            if control.should_stop():
                return
            posted = await steps.execute(api, client, control, providers, chunk)
            if not refused(posted):  # the batch's own run: a refusal raised LeaseLost
                control.update(posted)
            crash_point("execute:after_post")
            done += 1
            if lines is not None:
                lines.done += chunk["line_count"]
            progress.set(done)

    try:
        await asyncio.gather(*(one(c) for c in pending))
    finally:
        await progress.close()


def _progress_of(
    steps: Steps, chunks: list[ChunkView]
) -> tuple[ProgressReporter, LineProgress | None]:
    """The progress reporter and line counts of a run, set to the chunks done."""
    progress = ProgressReporter(steps.progress, len(chunks))
    lines = steps.lines
    if lines is not None:
        lines.begin(
            total=sum(c["line_count"] for c in chunks),
            done=sum(c["line_count"] for c in chunks if c["done"]),
        )
    progress.set(sum(1 for c in chunks if c["done"]))
    return progress, lines


async def _execute_shared(
    api: WorkerAPI,
    client: UpstreamClient,
    control: RunControl,
    settings: Settings,
    steps: Steps,
    chunks: list[ChunkView],
    fanout: int,
    flow_run_id: str | None,
) -> None:
    """The batch's run with helpers: start them, work chunks through claims
    beside them until none is left, and before a stop-finalize (cancel,
    expiry, budget) let the helpers' chunks in flight post their checkpoints."""
    pending = sum(not c["done"] for c in chunks)

    async def fan_out() -> None:
        try:
            await steps.fan_out(min(fanout - 1, pending - 1))
        except Exception as exc:  # no helpers: this run does every chunk itself
            log.warning("could not start helper runs for %s: %s", control.batch_id, exc)

    # In the background: a busy Prefect server took seconds to create a run,
    # and this run's own chunks need not wait for that.
    starting = asyncio.create_task(fan_out())
    progress, lines = _progress_of(steps, chunks)

    def seen(answer: ChunkClaimAnswer) -> None:
        if lines is not None:
            lines.done = lines.total - answer["pending_lines"]
        progress.set(len(chunks) - answer["pending_chunks"])

    try:
        await work_claims(
            api, client, control, settings, steps, flow_run_id, lease_token=control.token, seen=seen
        )
    finally:
        await progress.close()
        await starting
    if control.reason in {"cancelled", "expired", "budget_exceeded"}:
        await _helpers_settled(api, control)


async def _helpers_settled(api: WorkerAPI, control: RunControl) -> None:
    """Wait until no chunk is under a live claim: a helper told to stop
    posts what its chunk finished, and a dead helper's claim lapses. Bounded
    by a lease and a heartbeat; a post after that is refused at finalize."""
    deadline = time.monotonic() + float(control.lease_seconds) + control.heartbeat_seconds
    while time.monotonic() < deadline:
        answer = await asyncio.to_thread(api.renew_claims, control.batch_id, [])
        if not answer.get("claimed"):
            return
        await asyncio.sleep(min(WAIT_POLL_SECONDS, control.heartbeat_seconds))


async def work_claims(
    api: WorkerAPI,
    client: UpstreamClient,
    control: RunControl,
    settings: Settings,
    steps: Steps,
    flow_run_id: str | None,
    *,
    lease_token: str | None,
    held: set[str] | None = None,
    seen: Callable[[ChunkClaimAnswer], None] | None = None,
) -> int:
    """Claim chunks one at a time and execute them, `chunk_parallelism` at
    once, until none is left to claim or the batch must stop; returns the
    chunks this run checkpointed.

    The batch's run (`lease_token` given) waits while other runs still hold
    the last chunks, so it takes over any whose claim lapses; a helper run
    stops as soon as nothing is free. `held` is kept to the claim tokens in
    use (a helper's heartbeat renews them); `seen` hears every claim answer."""
    providers = await asyncio.to_thread(api.providers)
    held = set() if held is None else held
    done = 0

    async def slot() -> None:
        nonlocal done
        while True:
            await control.gate()  # a paused batch starts no chunk
            if control.should_stop():
                return
            answer = await asyncio.to_thread(
                api.claim_chunk, control.batch_id, flow_run_id, lease_token
            )
            control.update(answer)
            if seen is not None:
                seen(answer)
            chunk, token = answer["chunk"], answer["chunk_token"]
            if chunk is None or token is None:
                if control.paused and not control.should_stop():
                    continue  # paused since this run last looked: wait at the gate
                if lease_token is None or not answer["pending_chunks"] or control.should_stop():
                    return
                # Others hold the rest: look again soon, as finalize waits for this.
                await asyncio.sleep(min(WAIT_POLL_SECONDS, control.heartbeat_seconds))
                continue
            held.add(token)
            try:
                posted = await steps.execute(
                    api, client, control, providers, {**chunk, "chunk_token": token}
                )
            finally:
                held.discard(token)
            if refused(posted):
                continue
            control.update(posted)
            crash_point("execute:after_post")
            done += 1

    await asyncio.gather(*(slot() for _ in range(max(1, settings.chunk_parallelism))))
    return done


async def help_batch(
    api: WorkerAPI,
    client: UpstreamClient,
    batch_id: str,
    *,
    settings: Settings,
    steps: Steps | None = None,
    flow_run_id: str | None = None,
) -> int:
    """A helper run: work chunks of a batch whose own run started it, through
    chunk claims, until none is free; returns the chunks it checkpointed.

    It holds no batch lease: its heartbeat renews its chunk claims and reads
    the batch's control (cancel, expiry, pause, budget stop, ceilings), the
    same answer the batch's run reads. It never validates or finalizes."""
    steps = steps or Steps()
    held: set[str] = set()
    first = await asyncio.to_thread(api.renew_claims, batch_id, [])
    control = RunControl(
        api,
        batch_id,
        "",
        first,
        heartbeat_seconds=settings.heartbeat_seconds,
        on_ceilings=client.set_ceilings,
        renew=lambda: api.renew_claims(batch_id, sorted(held)),
    )
    if control.status != "in_progress":
        return 0
    async with control.heartbeat():
        return await work_claims(
            api, client, control, settings, steps, flow_run_id, lease_token=None, held=held
        )


class ProgressReporter:
    """Progress updates off the hot path: the first request does not wait for
    the progress artifact, at most one update is in flight, and updates that
    pile up meanwhile collapse into the latest value."""

    def __init__(self, report: Callable[[int, int], Awaitable[None]], total: int) -> None:
        self.report = report
        self.total = total
        self.done = 0
        self.sent: int | None = None
        self.task: asyncio.Task[None] | None = None

    def set(self, done: int) -> None:
        self.done = done
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self.sent != self.done:
            value = self.done
            try:
                await self.report(value, self.total)
            except Exception as exc:  # progress is cosmetic: never fail a batch over it
                log.warning("progress update failed: %s", exc)
            self.sent = value

    async def close(self) -> None:
        """Wait until the latest value is reported."""
        if self.task is not None:
            await self.task
