"""Writes `make soak` results into docs/reliability.md, only between
markers (the prose around them is written by hand).

Inside the crash-matrix section, each soak module owns a block of its own
(inner markers), so the crash matrix and the upstream-fault runs update
separately; the load test owns the block in the Load section.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
START, END = "<!-- crash-matrix:start -->", "<!-- crash-matrix:end -->"


def replace_between(text: str, start: str, end: str, body: str) -> str:
    """`text` with what lies between `start` and `end` replaced by `body`;
    the markers are appended at the end if missing."""
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def write_block(name: str, body: str, doc: Path = DOC) -> None:
    """Replace the block `name` inside the crash-matrix section of `doc`."""
    text = doc.read_text() if doc.exists() else "# Reliability\n"
    if START not in text or END not in text:
        text = replace_between(text, START, END, "")
    head, _, rest = text.partition(START)
    section, _, tail = rest.partition(END)
    section = replace_between(
        section, f"<!-- soak:{name}:start -->", f"<!-- soak:{name}:end -->", body
    )
    doc.write_text(f"{head}{START}\n{section.strip()}\n{END}{tail}")


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime())


def write_crash_matrix(rows: list[dict[str, Any]]) -> None:
    lines = [
        f"Last `make soak` crash matrix: {_stamp()}, {len(rows)} crash points, "
        f"{rows[0]['batches']} batches of {rows[0]['lines']} lines each, chunks of 50.",
        "",
        "| crash point | process killed | deaths | repeated requests (per batch) "
        "| seconds to all terminal | doctor |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        deaths = ", ".join(f"{k} {v}" for k, v in sorted(row["deaths"].items()))
        lines.append(
            f"| `{row['point']}` | {row['killed']} | {deaths} | "
            f"{', '.join(map(str, row['repeated']))} | {row['seconds']} | {row['doctor']} |"
        )
    write_block("crash", "\n".join(lines))


def write_up_kills(rows: list[dict[str, Any]], lines: int, latency_ms: int) -> None:
    """The `batchgate up` kill table (tests/soak/test_up_kills.py)."""
    table = [
        f"Last `make soak` `batchgate up` kill run: {_stamp()}, default settings, one batch "
        f"of {lines:,} lines (mock latency {latency_ms} ms), SIGKILL after ~600 upstream "
        "requests.",
        "",
        "| killed | lines done at the kill | s to first line recorded after | "
        "s to batch completed | repeated requests | `up` said | new batch s | Ctrl-C s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        said = "; ".join(f"`{line}`" for line in row["restarts"]) or "-"
        table.append(
            f"| {row['target']} ({row['killed']} process) | {row['done_at_kill']:,} | "
            f"{row['first_progress_s']} | {row['terminal_s']} | {row['repeated']} | {said} | "
            f"{row['new_batch_s']} | {row['stop_s']} |"
        )
    write_block("up-kills", "\n".join(table))


def write_upstream_faults(rows: list[dict[str, Any]]) -> None:
    lines = [
        f"Last `make soak` upstream-fault run: {_stamp()}.",
        "",
        "| mock faults | lines | status | completed | failed | error codes | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(row["codes"].items())) or "-"
        lines.append(
            f"| {row['faults']} | {row['lines']} | {row['status']} | {row['completed']} | "
            f"{row['failed']} | {codes} | {row['seconds']} |"
        )
    write_block("faults", "\n".join(lines))


def write_load(figures: dict[str, Any], budget_ms: float, doc: Path = DOC) -> None:
    """The load test's table, between the load markers of the Load section,
    and one row for this run on top of the runs table (the last ten kept)."""
    routes = figures["routes"]
    lines = [
        f"Last `make soak` load run: {_stamp()}, {figures['clients']} clients for "
        f"{figures['duration_s']:g} s, {figures['requests']:,} requests "
        f"({figures['requests'] / figures['duration_s']:.0f}/s), statuses "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(figures["statuses"].items()))
        + f"; the big batch had {figures['big_batch_completed_at_end_of_load']:,} lines "
        f"completed when the load stopped. Budget: p99 of metadata routes under {budget_ms:g} ms.",
        "",
        "| route | requests | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for route, row in routes.items():
        lines.append(
            f"| {route} | {row['count']:,} | {row['p50_ms']:g} | {row['p95_ms']:g} | "
            f"{row['p99_ms']:g} | {row['max_ms']:g} |"
        )
    text = replace_between(
        doc.read_text(), "<!-- soak:load:start -->", "<!-- soak:load:end -->", "\n".join(lines)
    )
    doc.write_text(add_load_run(text, figures))


LOAD_RUNS = "<!-- soak:load-runs:start -->", "<!-- soak:load-runs:end -->"
LOAD_RUNS_HEADER = (
    "| run | requests | batch in_progress after | lines/s without load | lines/s under load "
    "| longest stall | metadata p99 ms |\n|---|---|---|---|---|---|---|"
)


def add_load_run(text: str, figures: dict[str, Any], keep: int = 10) -> str:
    """`text` with this run's row first in the load-runs table."""
    metadata = [row["p99_ms"] for route, row in figures["routes"].items() if route != "upload"]
    started = figures["big_batch_in_progress_after_s"]
    row = (
        f"| {_stamp()} | {figures['requests']:,} | "
        f"{'never' if started is None else f'{started:.1f} s'} | "
        f"{figures['lines_per_s_without_load']:g} | {figures['lines_per_s_under_load']:g} | "
        f"{figures['longest_stall_s']:g} s | {min(metadata):g}–{max(metadata):g} |"
    )
    start, end = LOAD_RUNS
    old = text.partition(start)[2].partition(end)[0] if start in text else ""
    rows = [line for line in old.splitlines() if line.startswith("| 20")]
    body = "\n".join([LOAD_RUNS_HEADER, row, *rows[: keep - 1]])
    return replace_between(text, start, end, body)
