"""The `process-batch` flow: validate -> execute (chunked) -> finalize.

`drive_batch` (tasks/drive.py) is the whole orchestration as a plain coroutine over a
`WorkerAPI` and a set of `Steps`; the Prefect flow below runs it with each
step wrapped as a Prefect task (so the UI shows validate, one run per
chunk, finalize, plus a progress and a summary artifact). Unit tests run the
same coroutine with plain steps against the in-process worker API.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed, Failed

# The orchestration itself is Prefect-free (tasks/drive.py); re-exported here.
from tasks.drive import (  # noqa: F401
    OUTCOME_OF_REASON,
    ProgressReporter,
    Steps,
    drive_batch,
    finalize_batch,
    run_chunk,
    validate_input,
)
from tasks.settings import load_settings
from tasks.upstream import UpstreamClient
from tasks.worker_api import HttpWorkerAPI

# -- the Prefect adapters ------------------------------------------------------

_TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}

validate_task = task(name="validate", **_TASK_OPTIONS)(validate_input)
finalize_task = task(name="finalize", retries=2, retry_delay_seconds=2, **_TASK_OPTIONS)(
    finalize_batch
)


execute_chunk_task = task(
    name="execute-chunk",
    task_run_name="chunk-{chunk[chunk_index]}",
    retries=2,
    retry_delay_seconds=2,
    **_TASK_OPTIONS,
)(run_chunk)


def artifact_key(batch_id: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{batch_id.replace('_', '-').lower()}-{kind}"


def prefect_steps(batch_id: str) -> Steps:
    progress_id: list[Any] = []

    async def progress(done: int, total: int) -> None:
        value = 100.0 * done / total if total else 100.0
        if not progress_id:
            progress_id.append(
                await acreate_progress_artifact(
                    progress=value,
                    key=artifact_key(batch_id, "progress"),
                    description=f"Chunks finished for {batch_id}",
                )
            )
        else:
            await aupdate_progress_artifact(progress_id[0], progress=value)

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

    return Steps(
        validate=validate_task,
        execute=execute_chunk_task,
        finalize=finalize_task,
        progress=progress,
        summary=summary,
    )


@flow(name="process-batch", log_prints=False)
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
            steps=prefect_steps(batch_id),
            flow_run_id=str(runtime.flow_run.id),
        )
    get_run_logger().info("batch %s ended %s", batch_id, status)
    if status == "cancelled":
        return Cancelled(message=f"batch {batch_id} was cancelled")
    if status == "failed":
        return Failed(message=f"batch {batch_id} failed validation or finalization")
    return Completed(message=f"batch {batch_id} is {status}")
