"""Time batch input validation on a 200 MB, 50,000-line chat file.

Run: `uv run python bench/validate_bench.py [--lines 50000] [--approach orjson|polars|all]
[--repeat 5]`

Each approach runs in a fresh child process so its peak RSS is its own, and
reports its best of `--repeat` runs (wall and CPU), since the machine may be
busy with other work;
the file is read in 1 MiB blocks, as the validate task does. Compared:
- orjson: `tasks.validate.validate_jsonl` (one orjson parse per line);
- polars: the same framing, then `pl.read_ndjson` with a header-only schema
  on slices of 1,000 lines, with the per-line orjson pass only for a slice
  Polars refuses (that is how a bad line gets its number).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.jsonl import is_blank, iter_lines  # noqa: E402
from tasks.validate import ChunkSpan, LineError, ValidationResult, validate_jsonl  # noqa: E402

ENDPOINT = "/v1/chat/completions"
BLOCK = 1 << 20


def write_file(path: Path, lines: int, line_bytes: int = 4000) -> None:
    """Chat requests of about `line_bytes` each (the bulk is the message text)."""
    filler = "lorem ipsum dolor sit amet " * (line_bytes // 27)
    with open(path, "wb") as out:
        for i in range(lines):
            body = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": f"{i}: {filler}"},
                ],
                "max_tokens": 64,
            }
            req = {"custom_id": f"req-{i}", "method": "POST", "url": ENDPOINT, "body": body}
            out.write(orjson.dumps(req) + b"\n")


def blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            yield block


def validate_polars(path: Path, chunk_size: int = 1000) -> ValidationResult:
    """The Polars-slice alternative, complete enough to time (valid files)."""
    import polars as pl

    schema = {
        "custom_id": pl.String,
        "method": pl.String,
        "url": pl.String,
        "body": pl.Struct({"model": pl.String}),
    }
    total, errors, chunks, seen = 0, [], [], {}
    models: list[str] = []
    pending: list[tuple[int, int, int, bytes]] = []

    def flush() -> None:
        nonlocal total
        if not pending:
            return
        try:
            df = pl.read_ndjson(io.BytesIO(b"\n".join(p[3] for p in pending)), schema=schema)
            if df.height != len(pending):
                raise ValueError("row count mismatch")
            rows = df.select(
                pl.col("custom_id"),
                (pl.col("method") == "POST").alias("m_ok"),
                (pl.col("url") == ENDPOINT).alias("u_ok"),
                pl.col("body").struct.field("model"),
            ).iter_rows()
            for (n, _, _, _), (cid, m_ok, u_ok, model) in zip(pending, rows, strict=True):
                if not cid or not m_ok or not u_ok:
                    errors.append(LineError("invalid_request", f"Line {n}: bad", None, n))
                elif cid in seen:
                    errors.append(LineError("duplicate_custom_id", f"Line {n}: dup", None, n))
                seen.setdefault(cid, n)
                if model and model not in models:
                    models.append(model)
        except Exception:  # noqa: BLE001 - any refusal means: name the bad lines
            for n, _, _, data in pending:
                try:
                    orjson.loads(data)
                except orjson.JSONDecodeError:
                    errors.append(LineError("invalid_json_line", f"Line {n}: bad", None, n))
        chunks.append(
            ChunkSpan(len(chunks), pending[0][1], pending[-1][2], pending[0][0], len(pending))
        )
        total += len(pending)
        pending.clear()

    for n, start, end, data in iter_lines(blocks(path)):
        if data is None or is_blank(data):
            continue
        pending.append((n, start, end, data))
        if len(pending) == chunk_size:
            flush()
    flush()
    return ValidationResult(total, chunks, errors, models)


def measure(approach: str, path: Path, repeat: int) -> dict:
    """Best wall and CPU time of `repeat` runs (the machine may be shared)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls, cpus = [], []
    for _ in range(repeat):
        cpu_before = time.process_time()
        began = time.perf_counter()
        if approach == "orjson":
            result = validate_jsonl(blocks(path), ENDPOINT)
        else:
            result = validate_polars(path)
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu_before)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "approach": approach,
        "best_seconds": round(min(walls), 3),
        "all_seconds": [round(w, 3) for w in walls],
        "best_cpu_seconds": round(min(cpus), 3),
        "total": result.total,
        "errors": len(result.errors),
        "chunks": len(result.chunks),
        "peak_rss_mb": round(rss_after / 1024, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--approach", default="all", choices=["all", "orjson", "polars"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.file:  # child: measure one approach on an existing file
        import polars  # noqa: F401 - imported before the baseline in both children

        print(json.dumps(measure(args.approach, args.file, args.repeat)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.jsonl"
        write_file(path, args.lines)
        size_mb = os.path.getsize(path) / 1e6
        print(f"{args.lines} lines, {size_mb:.0f} MB, {BLOCK} byte blocks")
        approaches = ["orjson", "polars"] if args.approach == "all" else [args.approach]
        for approach in approaches:
            cmd = [sys.executable, __file__, "--approach", approach, "--file", str(path)]
            cmd += ["--repeat", str(args.repeat)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(out.strip())


if __name__ == "__main__":
    main()
