"""Time the results table build on a 50,000-line batch.

Run: `uv run python -m bench.results_table_bench [--lines 50000] [--repeat 3] [--write]`
(`--write` puts the section into docs/benchmarks.md, between its markers).

Writes a batch's files as batchgate writes them (the output file of chat
completions as `batchgate mock-upstream` answers them, an error file with 1 %
of the lines, and the per-line meta), then builds the table the way the
gateway does: `python -m tasks.results_table` in a child process, writing
Parquet, CSV and the summary. Reports the best wall time of `--repeat`
builds and the child's peak RSS, next to a baseline measured in the same run
on the same files: one `orjson.loads` per line of the output and error files
(parsing only, nothing built), in a child process as well. Then, in this
process, the two choices the build rests on, each against its alternative:
decoding the lines with `str.json_decode` against `scan_ndjson` (same
schema), and writing Parquet with Polars' own writer against pyarrow's.
Finally reads the Parquet file with polars, pyarrow and DuckDB.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.report import write_block

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
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


def best_of(repeat: int, work: Any) -> float:
    """The best wall time of `repeat` calls of `work`."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def choices(meta: Path, out: Path, err: Path, root: Path, repeat: int) -> dict[str, Any]:
    """The decoder and the Parquet writer, each timed against its alternative."""
    import polars as pl

    from tasks.results_table import RESULT_LINE_SCHEMA, _result_lines, results_frame

    frame = results_frame(meta, out, err).collect(engine="streaming")
    polars_file, pyarrow_file = root / "polars.parquet", root / "pyarrow.parquet"
    options: dict[str, Any] = {"compression": "zstd", "statistics": True}
    return {
        "json_decode": best_of(repeat, lambda: _result_lines(out).collect()),
        "scan_ndjson": best_of(
            repeat,
            lambda: pl.scan_ndjson(out, schema=RESULT_LINE_SCHEMA, ignore_errors=True).collect(),
        ),
        "polars_write": best_of(repeat, lambda: frame.write_parquet(polars_file, **options)),
        "pyarrow_write": best_of(
            repeat, lambda: frame.write_parquet(pyarrow_file, use_pyarrow=True, **options)
        ),
        "polars_mb": polars_file.stat().st_size / 1e6,
        "pyarrow_mb": pyarrow_file.stat().st_size / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.results_table_bench")
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"write the section into {DOCS}")
    args = parser.parse_args(argv)
    load = os.getloadavg()
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

        picked = choices(meta, out, err, root, args.repeat)

        import duckdb
        import polars as pl
        import pyarrow.parquet as pq

        rows_read = pl.read_parquet(parquet).height
        assert rows_read == pq.read_table(parquet).num_rows == args.lines
        counted = (
            duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{parquet}')").fetchone()
        )
        assert counted == (args.lines,)
        parquet_mb, csv_mb = parquet.stat().st_size / 1e6, csv.stat().st_size / 1e6
        floor = best["parse only (orjson, baseline)"][0]
        wall, rss = best["table + CSV + summary (as the gateway builds)"]
        met = wall < TARGET_SECONDS and rss < TARGET_RSS_MB
        rows = [
            f"| {label} | {w:.2f} s | {w / floor:.2f} | {r:.0f} MB |"
            for label, (w, r) in best.items()
        ]
        section = "\n".join(
            [
                START,
                "## Results table",
                "",
                f"Measured {datetime.date.today()} (load average at start "
                f"{', '.join(f'{x:.1f}' for x in load)}) with",
                "",
                "    uv run python -m bench.results_table_bench --write",
                "",
                f"{args.lines:,} lines ({size:.1f} MB of per-line meta, output and error "
                "files, 1 % failed, chat answers as the mock gives them), built the way the "
                "gateway builds it: `python -m tasks.results_table` in a child process. "
                f"Targets: under {TARGET_SECONDS:g} s and {TARGET_RSS_MB:g} MB peak RSS of "
                f"that process. **{'met' if met else 'not met'}**",
                "",
                f"| build | wall (best of {args.repeat}) | x baseline | peak RSS |",
                "| --- | --- | --- | --- |",
                *rows,
                "",
                "Wall time includes the child's start (Python, importing Polars). The "
                "baseline is the floor for any reader of these files: one `orjson.loads` per "
                "line, nothing built. The table is read back with `polars.read_parquet`, "
                "`pyarrow.parquet.read_table` and DuckDB's `read_parquet` "
                f"({rows_read:,} rows each). Parquet {parquet_mb:.1f} MB (zstd), CSV "
                f"{csv_mb:.1f} MB. Measured in the same run, in one process (best of "
                f"{args.repeat}): decoding the output file's lines with `str.json_decode` "
                f"and the fixed schema took {picked['json_decode']:.2f} s against "
                f"{picked['scan_ndjson']:.2f} s for `scan_ndjson` with the same schema; "
                f"writing the Parquet file with Polars' own writer took "
                f"{picked['polars_write']:.3f} s ({picked['polars_mb']:.2f} MB) against "
                f"{picked['pyarrow_write']:.3f} s ({picked['pyarrow_mb']:.2f} MB) through "
                "pyarrow (`use_pyarrow=True`), so the build writes with Polars and pyarrow "
                "is a reader of the file. The gateway's own memory with a client reading "
                "live results throughout a batch is in 'Big file' (`python -m bench`).",
                END,
            ]
        )
        print(section)
        if args.write:
            write_block(DOCS, START, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
