"""The names of the deployments the runner serves (flows/serve.py) and
prefect.yaml declares; each flow is named as its deployment. In a module of
their own so the flows, the runner, the gateway (which starts runs by name)
and `up` (which waits for them) all quote one list."""

from __future__ import annotations

PROCESS_BATCH_DEPLOYMENT = "process-batch"
PROCESS_CHUNKS_DEPLOYMENT = "process-chunks"  # helper runs of one batch
RETENTION_DEPLOYMENT = "retention"
# Every served deployment (a work pool's `prefect deploy` deploys each of
# them: bench/scale_stack.py).
DEPLOYMENT_NAMES = (PROCESS_BATCH_DEPLOYMENT, PROCESS_CHUNKS_DEPLOYMENT, RETENTION_DEPLOYMENT)
# "flow/deployment" of each: what `batchgate up` waits for before it says ready.
SERVED_DEPLOYMENTS = tuple(f"{name}/{name}" for name in DEPLOYMENT_NAMES)
