"""`batchgate up`: the supervisor of a local Prefect server, the gateway and a runner."""
