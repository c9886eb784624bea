"""Time the results table build (issue 12) on a 50,000-line batch.

Run: `uv run python -m bench.results_table_bench [--lines 50000] [--repeat 3]`

Writes a batch's files as batchgate writes them (the output file of chat
completions as `batchgate mock-upstream` answers them, an error file with 1 %
of the lines, and the per-line meta), then builds the table the way the
gateway does: `python -m tasks.results_table` in a child process, writing
Parquet, CSV and the summary. Reports the best wall time of `--repeat`
builds and the child's peak RSS, next to a baseline measured in the same run
on the same files: one `orjson.loads` per line of the output and error files
(parsing only, nothing built), in a child process as well. Finally reads the
Parquet file with polars, pyarrow and DuckDB.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.0
TARGET_RSS_MB = 300.0

PARSE_ONLY = """
import sys, orjson
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        for line in handle:
            orjson.loads(line)
"""


def write_files(root: Path, lines: int) -> tuple[Path, Path, Path]:
    """The batch's meta, output and error files (1 % of lines failed)."""
    meta, out, err = root / "meta.jsonl", root / "out.jsonl", root / "err.jsonl"
    with meta.open("wb") as m, out.open("wb") as o, err.open("wb") as e:
        for i in range(lines):
            custom_id = f"request-{i}"
            failed = i % 100 == 42
            m.write(
                orjson.dumps(
                    {
                        "custom_id": custom_id,
                        "model": "gpt-4o-mini",
                        "provider": "openai",
                        "latency_ms": 200.0 + i % 37,
                        "attempts": 1 + (i % 10 == 0),
                    }
                )
                + b"\n"
            )
            if failed:
                body = {"error": {"message": "mock failure", "type": "server_error", "code": None}}
                response = {"status_code": 500, "request_id": f"req_{i}", "body": body}
                e.write(orjson.dumps({"id": f"batch_req_{i}", "custom_id": custom_id,
                                      "response": response, "error": None}) + b"\n")  # fmt: skip
                continue
            content = f"Mock answer {i}: " + "lorem ipsum dolor sit amet " * 12
            body = {
                "id": f"chatcmpl-mock{i:010d}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 40,
                    "completion_tokens": 80,
                    "total_tokens": 120,
                    "prompt_tokens_details": {"cached_tokens": 10},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
                "system_fingerprint": "fp_mock",
            }
            response = {"status_code": 200, "request_id": f"req_{i}", "body": body}
            o.write(orjson.dumps({"id": f"batch_req_{i}", "custom_id": custom_id,
                                  "response": response, "error": None}) + b"\n")  # fmt: skip
    return meta, out, err


def timed_child(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.results_table_bench")
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        meta, out, err = write_files(root, args.lines)
        size = sum(p.stat().st_size for p in (meta, out, err)) / 1e6
        parquet, csv, summary = root / "t.parquet", root / "t.csv", root / "s.json"
        build = [sys.executable, "-m", "tasks.results_table", str(meta), str(out), str(err)]
        build += [str(parquet), "--csv", str(csv), "--summary", str(summary)]
        table_only = build[:7]
        baseline = [sys.executable, "-c", PARSE_ONLY, str(out), str(err)]
        runs = {"parse only (orjson, baseline)": baseline, "table (Parquet)": table_only}
        runs["table + CSV + summary (as the gateway builds)"] = build
        best: dict[str, tuple[float, float]] = {}
        for label, cmd in runs.items():
            results = [timed_child(cmd) for _ in range(args.repeat)]
            best[label] = (min(r[0] for r in results), max(r[1] for r in results))

        import duckdb
        import polars as pl
        import pyarrow.parquet as pq

        rows = pl.read_parquet(parquet).height
        assert rows == pq.read_table(parquet).num_rows == args.lines
        counted = (
            duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{parquet}')").fetchone()
        )
        assert counted == (args.lines,)
        floor = best["parse only (orjson, baseline)"][0]
        print(f"{args.lines:,} lines, {size:.1f} MB of meta + output + error files")
        print(f"readable by polars, pyarrow and DuckDB: {rows:,} rows; parquet")
        print(f"{parquet.stat().st_size / 1e6:.1f} MB, csv {csv.stat().st_size / 1e6:.1f} MB\n")
        print(f"| build | wall (best of {args.repeat}) | x baseline | peak RSS |")
        print("| --- | --- | --- | --- |")
        for label, (wall, rss) in best.items():
            print(f"| {label} | {wall:.2f} s | {wall / floor:.2f} | {rss:.0f} MB |")
        wall, rss = best["table + CSV + summary (as the gateway builds)"]
        met = wall < TARGET_SECONDS and rss < TARGET_RSS_MB
        print(
            f"\ntargets: < {TARGET_SECONDS:g} s and < {TARGET_RSS_MB:g} MB: "
            f"{'met' if met else 'NOT met'} (maxrss of this process: "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
