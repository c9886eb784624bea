"""The `process-batch` flow: validate -> execute (chunked) -> finalize.

`drive_batch` (tasks/drive.py) is the whole orchestration as a plain coroutine over a
`WorkerAPI` and a set of `Steps`; the Prefect flow below runs it with each
step wrapped as a Prefect task (so the UI shows validate, one run per
chunk, finalize, plus progress, analytics and report artifacts). Unit tests
and `batchgate run` run the same coroutine with plain steps against the
in-process worker API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed, Failed

# The orchestration itself is Prefect-free (tasks/drive.py); re-exported here.
from flows.deployments import PROCESS_BATCH_DEPLOYMENT, PROCESS_CHUNKS_DEPLOYMENT
from tasks.drive import (  # noqa: F401
    OUTCOME_OF_REASON,
    ProgressReporter,
    Steps,
    drive_batch,
    finalize_batch,
    run_chunk,
    validate_input,
)
from tasks.ledger import LedgerError
from tasks.settings import load_settings
from tasks.summary_report import LineProgress, summary_headline, summary_markdown, summary_rows
from tasks.upstream import UpstreamClient
from tasks.worker_api import HttpWorkerAPI, WorkerAPI
from tasks.worker_messages import PlanAnswer

log = logging.getLogger("batchgate.worker")


# -- the Prefect adapters ------------------------------------------------------


def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """A task's `retry_condition_fn`: not when the gateway refused the work
    (the lease went to another run, the batch or its input is gone). Asking
    again gets the same refusal, two retry delays later."""
    return not isinstance(getattr(state, "data", None), LedgerError)


_TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "persist_result": False,
    "retry_condition_fn": worth_retrying,
}

validate_task = task(name="validate", **_TASK_OPTIONS)(validate_input)
finalize_task = task(name="finalize", retries=2, retry_delay_seconds=2, **_TASK_OPTIONS)(
    finalize_batch
)


# Tags a flow run carries for the models of its batch, at most.
MAX_MODEL_TAGS = 20


def tag_models(models: Sequence[str]) -> None:
    """Tag the run with every model its lines ask for. The gateway tagged it
    with the batch's `model` (its first line's) when it made it; a filter by
    model in the Prefect UI should find a mixed batch under each of them. A
    failure only loses the tags."""
    run = runtime.flow_run
    tags = set(run.tags) | {f"model:{m}" for m in sorted(models)[:MAX_MODEL_TAGS]}
    if not models or tags == set(run.tags):
        return
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, tags=sorted(tags))
    except Exception as exc:  # the batch goes on without them
        log.warning("could not tag flow run %s with its models: %s", run.id, exc)


def validate_and_tag(*args: Any) -> PlanAnswer:
    """The validate step, then the run's model tags."""
    plan = validate_task(*args)
    tag_models(plan.get("models") or [])
    return plan


execute_chunk_task = task(
    name="execute-chunk",
    task_run_name="chunk-{chunk[chunk_index]}",
    retries=2,
    retry_delay_seconds=2,
    **_TASK_OPTIONS,
)(run_chunk)


# The helper runs' flow and deployment (flows/process_chunks.py, registered by
# flows/serve.py and declared in prefect.yaml under this name): each flow is
# named as its deployment.
HELPER_FLOW = PROCESS_CHUNKS_DEPLOYMENT
HELPER_DEPLOYMENT = f"{HELPER_FLOW}/{HELPER_FLOW}"


async def start_helpers(batch_id: str, count: int) -> None:
    """Create `count` helper flow runs for the batch and return at once.

    Named after the batch, so the Prefect UI shows whose chunks they work;
    the idempotency key names this run, so a retried start makes no second
    helper, and a later run of the batch (after this one died) gets its own."""
    from prefect.deployments import arun_deployment

    parent = str(runtime.flow_run.id)
    await asyncio.gather(
        *(
            arun_deployment(
                name=HELPER_DEPLOYMENT,
                parameters={"batch_id": batch_id},
                timeout=0,
                flow_run_name=f"{batch_id}-helper-{n}",
                tags=[f"batch:{batch_id}", "fanout-helper"],
                idempotency_key=f"{parent}:helper:{n}",
                as_subflow=False,
            )
            for n in range(1, count + 1)
        )
    )
    if count:
        get_run_logger().info("started %d helper runs for %s", count, batch_id)


def artifact_key(batch_id: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{batch_id.replace('_', '-').lower()}-{kind}"


def prefect_steps(batch_id: str, api: WorkerAPI | None = None) -> Steps:
    progress_id: list[Any] = []
    lines = LineProgress()
    shown: dict[str, Any] = {"value": 0.0, "paused": False}
    showing = asyncio.Lock()  # progress and a pause note: one artifact, made once

    def description() -> str:
        running = f"Chunks finished for {batch_id}: {lines.describe()}"
        if shown["paused"]:
            return f"PAUSED - {running} (resume: POST /admin/batches/{batch_id}/resume)"
        return running

    async def show() -> None:
        async with showing:
            await _show()

    async def _show() -> None:
        value, text = shown["value"], description()
        if not progress_id:
            progress_id.append(
                await acreate_progress_artifact(
                    progress=value, key=artifact_key(batch_id, "progress"), description=text
                )
            )
        else:
            await aupdate_progress_artifact(progress_id[0], progress=value, description=text)

    async def progress(done: int, total: int) -> None:
        shown["value"] = 100.0 * done / total if total else 100.0
        await show()

    async def control_note(text: str, paused: bool) -> None:
        """A pause or resume: a line in the flow run's log, and the progress
        artifact's description says "PAUSED" while it lasts."""
        get_run_logger().info(text)
        shown["paused"] = paused
        await show()

    async def summary(batch: dict[str, Any]) -> None:
        usage = batch.get("usage") or {}
        rows = [
            {"field": "status", "value": batch["status"]},
            {"field": "total", "value": batch["total"]},
            {"field": "completed", "value": batch["completed"]},
            {"field": "failed", "value": batch["failed"]},
            {"field": "model", "value": batch.get("model")},
            {"field": "input_tokens", "value": usage.get("input_tokens", 0)},
            {"field": "output_tokens", "value": usage.get("output_tokens", 0)},
            {"field": "total_tokens", "value": usage.get("total_tokens", 0)},
            {"field": "output_file_id", "value": batch.get("output_file_id")},
            {"field": "error_file_id", "value": batch.get("error_file_id")},
        ]
        rows += [
            {"field": f"error:{e.get('code')}", "value": e.get("line")}
            for e in (batch.get("errors") or [])[:20]
        ]
        await acreate_table_artifact(
            table=rows, key=artifact_key(batch_id, "summary"), description=f"Summary of {batch_id}"
        )
        if api is not None:
            await analytics()

    async def analytics() -> None:
        """The per-model and per-provider analytics: asking for them
        builds the results table and summary once, at finalize."""
        assert api is not None
        try:
            found = await asyncio.to_thread(api.results_summary, batch_id)
        except Exception as exc:  # analytics are a report: never fail a batch over them
            log.warning("summary of %s unavailable: %s", batch_id, exc)
            return
        if not found:
            return
        await acreate_table_artifact(
            table=summary_rows(found) or [{"group": "batch", "name": "no lines"}],
            key=artifact_key(batch_id, "analytics"),
            description=f"Per model and per provider. {summary_headline(found)}",
        )
        await acreate_markdown_artifact(
            markdown=summary_markdown(found),
            key=artifact_key(batch_id, "report"),
            description=f"Report of {batch_id}",
        )

    return Steps(
        validate=validate_and_tag,
        execute=execute_chunk_task,
        finalize=finalize_task,
        progress=progress,
        summary=summary,
        control_note=control_note,
        lines=lines,
        fan_out=lambda count: start_helpers(batch_id, count),
    )


@flow(name=PROCESS_BATCH_DEPLOYMENT, log_prints=False)
async def process_batch(batch_id: str) -> Any:
    """One batch, start to end. Parameters hold the batch id only: no secrets."""
    settings = load_settings()
    api = HttpWorkerAPI.from_settings(settings)
    async with UpstreamClient.from_settings(settings) as client:
        status = await drive_batch(
            api,
            client,
            batch_id,
            settings=settings,
            steps=prefect_steps(batch_id, api),
            flow_run_id=str(runtime.flow_run.id),
        )
    get_run_logger().info("batch %s ended %s", batch_id, status)
    if status == "cancelled":
        return Cancelled(message=f"batch {batch_id} was cancelled")
    if status == "failed":
        return Failed(message=f"batch {batch_id} failed validation or finalization")
    return Completed(message=f"batch {batch_id} is {status}")
