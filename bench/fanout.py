"""One batch, one run against one batch fanned out to several runs.

    uv run --no-sync python -m bench.fanout [--lines 3000] [--fanout 3]

The latency-bound regime: the mock provider answers after `--latency-ms`
(200 ms) and each run may keep `--concurrency` (16) requests in flight, so
one run is the bottleneck (16 / 0.2 s = 80 lines/s at most). The same batch
runs on a fresh stack (Prefect server shared, gateway, one runner, mock) with
`BATCHGATE_FANOUT_RUNS=1`, then with `--fanout`; the table gives wall time
from `batches.create` to `completed`, lines per second, the ratio to the
fan-out 1 run measured here, and how many chunks' checkpoints the gateway
accepted from each flow run. All runs share this machine: that shows the provider windows
adding up; spreading them over hosts is the scale harness's part
(docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.report import markdown_table, ratio
from harness.batches import check_batch
from harness.lines import chat_lines
from harness.stack import INTERNAL_TOKEN, PrefectServer, Stack

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fanout", type=int, default=3)
    return parser.parse_args(argv)


def one_run(
    root: Path, prefect: PrefectServer, args: argparse.Namespace, fanout: int
) -> dict[str, Any]:
    """The batch on a fresh stack with this fan-out: wall time and runs seen."""
    with Stack(
        root / f"fanout-{fanout}",
        prefect,
        mock_args=["--latency-ms", str(args.latency_ms)],
        chunk_size=args.chunk_size,
        fanout_runs=fanout,
        retention_interval_seconds=3600,
    ) as stack:
        stack.add_provider(
            "openai", f"{stack.mock_url}/v1", "sk-mock-openai", args.concurrency, default=True
        )
        client = stack.client(stack.create_key("bench"))
        path = root / f"input-{fanout}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in chat_lines("b", args.lines)))
        with path.open("rb") as handle:
            file_id = client.files.create(file=handle, purpose="batch").id
        began = time.perf_counter()
        batch_id = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        while (batch := client.batches.retrieve(batch_id)).status not in TERMINAL:
            time.sleep(0.1)
        wall = time.perf_counter() - began
        check = check_batch(client, batch, "b", args.lines, {})
        if batch.status != "completed" or check.problems:
            raise RuntimeError(f"{batch_id} ended {batch.status}: {check.problems}")
        chunks = httpx.get(
            f"{stack.url}/internal/batches/{batch_id}/chunks",
            headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"},
        ).json()
        sent = stack.mock_stats()["total"]
    return {
        "fanout": fanout,
        "wall": wall,
        # Chunks checkpointed per flow run, most first.
        "runs": sorted(Counter(c["done_by"] for c in chunks).values(), reverse=True),
        "sent": sent,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        root = Path(tmp)
        with PrefectServer(root / "prefect-server") as prefect:
            results = [one_run(root, prefect, args, f) for f in (1, args.fanout)]
    base = args.lines / results[0]["wall"]
    rows = [
        [
            str(r["fanout"]),
            f"{r['wall']:.1f} s",
            f"{args.lines / r['wall']:.0f}",
            f"{ratio(args.lines / r['wall'], base):.2f} x",
            "/".join(map(str, r["runs"])),
            str(r["sent"]),
        ]
        for r in results
    ]
    print(
        f"One batch of {args.lines:,} lines, chunks of {args.chunk_size}, mock at "
        f"{args.latency_ms:.0f} ms, {args.concurrency} requests in flight per run; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        markdown_table(
            ["fanout_runs", "wall", "lines/s", "vs fan-out 1", "chunks per run", "requests"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
