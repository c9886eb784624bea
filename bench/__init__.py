"""The batchgate benchmark suite: `uv run python -m bench --help`."""
