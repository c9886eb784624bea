"""`batchgate mock-upstream`: a fake OpenAI-compatible provider, for tests,
dry runs and benchmarks."""
