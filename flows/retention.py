"""The `retention` flow: delete expired files.

Scheduled by the runner (`flows/serve.py`) and by `prefect.yaml`. The sweep
itself runs in the gateway, which owns the metadata and the blobs; this
flow asks for it through the internal API and reports what went.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.deployments import RETENTION_DEPLOYMENT
from tasks.settings import load_settings
from tasks.worker_api import HttpWorkerAPI


@flow(name=RETENTION_DEPLOYMENT, log_prints=False)
def retention() -> dict[str, Any]:
    api = HttpWorkerAPI.from_settings(load_settings())
    result = api.retention()
    get_run_logger().info("retention deleted %d expired files", result["deleted_files"])
    return result
