"""`uv run python -m bench`: the Performance figures of batchgate, measured
against a plain asyncio loop in the same run.

Starts the real system (a Prefect server, the gateway, a runner and
`batchgate mock-upstream` with a set latency, each its own process), runs
batches through the official `openai` SDK, runs the baselines (asyncio +
aiohttp, and asyncio + httpx for reference) against the same mock at the same
concurrency, prints the tables and writes them to docs/benchmarks.md.

The full run takes about 10-15 minutes on 2 cores; `--quick` is a smoke check
(small sizes, under 3 minutes) that prints but does not write the docs unless
`--output` is given.

`--only run-file` (or `python -m bench.run_file`) measures `batchgate run`
against two hand-written scripts instead (bench/run_file.py); its section of
docs/benchmarks.md is kept when the rest is rewritten.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import scenarios
from bench.report import Section, render_report, render_section, write_report
from bench.system import BenchSystem
from harness.stack import PrefectServer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SCENARIOS = ("latency", "overhead", "start", "big")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=(*SCENARIOS, "run-file"),
        default=list(SCENARIOS),
        help="run only these measurements (default: all); 'big' includes the growth table",
    )
    parser.add_argument("--concurrency", type=int, default=128, help="provider max_concurrency")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="latency-bound mock delay")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"where to write the report (default: {DOCS} for a full run, nowhere for --quick)",
    )
    return parser.parse_args(argv)


def machine_note() -> str:
    cpus = os.cpu_count()
    memory = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.release()}, {cpus} CPUs, {memory:.0f} GiB RAM, "
        f"Python {platform.python_version()}; load average at start {load}"
    )


def command_line(argv: list[str]) -> str:
    return " ".join(["uv run python -m bench", *argv])


def emit(section: Section) -> Section:
    print("\n" + render_section(section) + "\n", flush=True)
    return section


def run(args: argparse.Namespace, work: Path) -> list[Section]:
    sizes = scenarios.QUICK if args.quick else scenarios.FULL
    sections: list[Section] = []
    with PrefectServer(work / "prefect") as prefect:
        if "latency" in args.only:
            root = work / "latency"
            with BenchSystem(
                root, prefect, latency_ms=args.latency_ms, concurrency=args.concurrency
            ) as system:
                scenarios.warm_up(system, root)
                runs = scenarios.compare(system, root, sizes.latency_lines, "latency")
                sections.append(
                    emit(scenarios.latency_section(runs, args.latency_ms, args.concurrency))
                )
        rest = [s for s in args.only if s != "latency"]
        if not rest:
            return sections
        root = work / "zero"
        with BenchSystem(root, prefect, latency_ms=0, concurrency=args.concurrency) as system:
            scenarios.warm_up(system, root)
            if "overhead" in args.only:
                runs = scenarios.compare(system, root, sizes.overhead_lines, "overhead")
                sections.append(emit(scenarios.overhead_section(runs, args.concurrency)))
            if "start" in args.only:
                delays = scenarios.start_latency(system, root, sizes.start_runs)
                sections.append(emit(scenarios.start_section(delays)))
            if "big" in args.only:
                big = scenarios.big_file(system, root, sizes.big_lines)
                sections.append(emit(scenarios.big_section(big)))
                grown = scenarios.scale_runs(system, root, sizes.scale_lines)
                sections.append(emit(scenarios.scale_section([*grown, (big.size, big.run)])))
    return sections


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if "run-file" in args.only:
        from bench import run_file

        extra = ["--quick"] if args.quick else []
        extra += ["--output", str(args.output)] if args.output else []
        code = run_file.main(extra)
        args.only = [s for s in args.only if s != "run-file"]
        if not args.only:
            return code
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    note = machine_note()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="batchgate-bench-") as tmp:
        sections = run(args, Path(tmp))
    took = time.monotonic() - began
    print(f"benchmark took {took:.0f} s", flush=True)
    output = args.output or (None if args.quick else DOCS)
    if output is not None:
        intro = (
            f"Each figure is one run of the real system on this machine (the whole suite took"
            f" {took / 60:.0f} minutes); the baselines run in the same session against the same"
            " mock, so compare ratios rather than absolute times. Metrics and webhooks are on:"
            " `/metrics` is scraped every 15 s and every batch's end is delivered to a webhook"
            " receiver."
        )
        text = render_report(
            sections,
            command=command_line(argv),
            machine=note,
            date=datetime.date.today().isoformat(),
            intro=intro,
        )
        write_report(output, text)
        print(f"wrote {output}")
    return 0 if all(s.passed is not False for s in sections) else 1


if __name__ == "__main__":
    raise SystemExit(main())
