"""The test and benchmark harness: real servers started and stopped for a
test or a benchmark run (a Prefect server, gateways, `batchgate up`, the mock
provider, webhook receivers), the SDK-side batch helpers and checks, and the
report writers. tests/ and bench/ both use it and never each other."""
