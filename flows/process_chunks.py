"""The `process-chunks` flow: a helper run of one batch.

A batch's own `process-batch` run starts up to `fanout_runs - 1` of these
through Prefect when the batch has several chunks; any worker on any host
picks them up. A helper takes the batch's chunks through chunk claims
(`help_batch`, tasks/drive.py), executes each as the `execute-chunk` task
with its own provider concurrency, posts each checkpoint with its claim
token, and ends when no chunk is free. It never validates or finalizes:
the batch's run does, once every chunk is done.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.states import Completed

from flows.process_batch import HELPER_FLOW, execute_chunk_task
from tasks.drive import Steps, help_batch
from tasks.settings import load_settings
from tasks.upstream import UpstreamClient
from tasks.worker_api import HttpWorkerAPI


@flow(name=HELPER_FLOW, log_prints=False)
async def process_chunks(batch_id: str) -> Any:
    """Chunks of one batch, beside its own run. Parameters: the batch id only."""
    settings = load_settings()
    api = HttpWorkerAPI.from_settings(settings)
    async with UpstreamClient.from_settings(settings) as client:
        done = await help_batch(
            api,
            client,
            batch_id,
            settings=settings,
            steps=Steps(execute=execute_chunk_task),
            flow_run_id=str(runtime.flow_run.id),
        )
    get_run_logger().info("helped batch %s: %d chunks checkpointed", batch_id, done)
    return Completed(message=f"{done} chunks of {batch_id}")
