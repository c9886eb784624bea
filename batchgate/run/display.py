"""What `batchgate run` prints: a live bar, JSON lines, or nothing, and a
summary at the end.

The bar is rich's (rich is already installed with Prefect, so it costs no
new dependency; it draws the bar, the columns and the summary table from one
library, and sends log lines above a live bar instead of through it; tqdm
would have needed a table printer besides). Everything the display shows is
read from `tasks.local_run.Progress`; nothing here touches the engine.

Where output goes: the bar, the summary table and the JSON lines
(`--progress json`) go to stdout; logs and validation errors to stderr. When
stdout is not a terminal, `auto` shows no bar, only the summary.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import Any, TextIO

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from tasks.local_run import Progress, RunOutcome

BAR_REFRESH_SECONDS = 0.25
JSON_INTERVAL_SECONDS = 1.0
RATE_WINDOW_SECONDS = 5.0


class RateWindow:
    """Lines per second over the last few seconds, so the ETA follows changes
    (a provider that starts throttling) instead of the whole run's average."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def rate(self, finished: int) -> float:
        at = time.monotonic()
        self.samples.append((at, finished))
        while len(self.samples) > 2 and at - self.samples[0][0] > RATE_WINDOW_SECONDS:
            self.samples.popleft()
        first_at, first = self.samples[0]
        return (finished - first) / (at - first_at) if at > first_at else 0.0


def snapshot(progress: Progress, rates: RateWindow) -> dict[str, Any]:
    rate = rates.rate(progress.meter.finished)
    remaining = None if progress.total is None else max(0, progress.total - progress.done)
    eta = None if remaining is None or rate <= 0 else remaining / rate
    return {
        "done": progress.done,
        "total": progress.total,
        "failed": progress.failed,
        "requests_per_second": round(rate, 1),
        "eta_seconds": None if eta is None else round(eta, 1),
        "windows": {
            name: {"window": limit, "in_flight": in_flight, "max": ceiling}
            for name, (limit, in_flight, ceiling) in progress.windows().items()
        },
        "stopping": progress.stopping,
    }


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _windows_text(windows: dict[str, Any]) -> str:
    return " ".join(
        f"{name} {w['in_flight']}/{w['window']} (max {w['max']})" for name, w in windows.items()
    )


async def show_bar(progress: Progress, console: Console) -> None:
    """The live bar, redrawn a few times a second until cancelled."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} req/s"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("window {task.fields[windows]}"),
    )
    rates = RateWindow()
    with RichProgress(*columns, console=console, auto_refresh=False, transient=False) as bar:
        task = bar.add_task("validating", total=None, rate="0", eta="-:--", failed=0, windows="-")
        try:
            while True:
                _update(bar, task, snapshot(progress, rates))
                await asyncio.sleep(BAR_REFRESH_SECONDS)
        finally:
            _update(bar, task, snapshot(progress, rates))


def _update(bar: RichProgress, task: Any, now: dict[str, Any]) -> None:
    description = "stopping" if now["stopping"] else "running" if now["total"] else "validating"
    bar.update(
        task,
        description=description,
        completed=now["done"],
        total=now["total"],
        rate=f"{now['requests_per_second']:.0f}",
        eta=_clock(now["eta_seconds"]),
        failed=now["failed"],
        windows=_windows_text(now["windows"]) or "-",
    )
    bar.refresh()


async def show_json(progress: Progress, out: TextIO) -> None:
    """One JSON object per line per second: {"event": "progress", ...}."""
    rates = RateWindow()
    try:
        while True:
            await asyncio.sleep(JSON_INTERVAL_SECONDS)
            _emit(out, {"event": "progress", **snapshot(progress, rates)})
    finally:
        _emit(out, {"event": "progress", **snapshot(progress, rates)})


def _emit(out: TextIO, event: dict[str, Any]) -> None:
    out.write(orjson.dumps(event).decode() + "\n")
    out.flush()


# -- the summary ------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def summary_rows(progress: Progress) -> list[dict[str, Any]]:
    rows = []
    for model, stats in sorted(progress.meter.models.items()):
        p50, p95 = stats.percentile(0.5), stats.percentile(0.95)
        rows.append(
            {
                "model": model,
                "lines": stats.lines,
                "failed": stats.failed,
                "input_tokens": stats.input_tokens,
                "output_tokens": stats.output_tokens,
                "latency_p50_ms": None if p50 is None else round(p50 * 1000, 1),
                "latency_p95_ms": None if p95 is None else round(p95 * 1000, 1),
            }
        )
    return rows


def summary_event(progress: Progress, outcome: RunOutcome, took: float) -> dict[str, Any]:
    batch = outcome.batch
    usage = (batch.usage if batch else None) or {}
    return {
        "event": "summary",
        "status": outcome.status,
        "exit_code": outcome.exit_code,
        "total": batch.total if batch else None,
        "completed": batch.completed if batch and outcome.status == "completed" else None,
        "failed": batch.failed if batch and outcome.status == "completed" else None,
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "seconds": round(took, 2),
        "sent_this_run": progress.meter.finished,
        "models": summary_rows(progress),
    }


def print_summary(
    progress: Progress, outcome: RunOutcome, took: float, console: Console, paths: dict[str, str]
) -> None:
    event = summary_event(progress, outcome, took)
    table = Table(title=f"batchgate run: {outcome.status} in {took:.1f} s")
    for name in ("model", "lines", "failed", "tokens in", "tokens out", "p50", "p95"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in event["models"]:
        table.add_row(
            row["model"],
            f"{row['lines']:,}",
            f"{row['failed']:,}",
            f"{row['input_tokens']:,}",
            f"{row['output_tokens']:,}",
            _ms(None if row["latency_p50_ms"] is None else row["latency_p50_ms"] / 1000),
            _ms(None if row["latency_p95_ms"] is None else row["latency_p95_ms"] / 1000),
        )
    if event["completed"] is not None:
        table.add_section()
        table.add_row(
            "whole file",
            f"{event['total']:,}",
            f"{event['failed']:,}",
            f"{event['input_tokens'] or 0:,}",
            f"{event['output_tokens'] or 0:,}",
            "",
            "",
        )
    console.print(table)
    if outcome.status == "completed":
        console.print(f"output: {paths['output']}\nerrors: {paths['errors']}", highlight=False)
    if outcome.message:
        console.print(outcome.message, highlight=False)


def print_json_summary(progress: Progress, outcome: RunOutcome, took: float) -> None:
    _emit(sys.stdout, summary_event(progress, outcome, took))
