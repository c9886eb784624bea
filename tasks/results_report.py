"""A batch's summary as people read it: rows for a table artifact, a
markdown report, and the progress line (lines, requests/s, ETA). Plain
data in, plain data out; the flow run publishes them as Prefect artifacts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from storage.records import USAGE_COUNTS

GROUP_COLUMNS = (
    *USAGE_COUNTS,
    "latency_ms_p50",
    "latency_ms_p95",
    "latency_ms_max",
    "retries",
)


def _errors_text(errors: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['code']}: {e['count']}" for e in errors) or "-"


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and one per provider, the same columns for both."""
    rows = []
    for group in ("model", "provider"):
        for item in summary.get(f"by_{group}") or []:
            rows.append(
                {
                    "group": group,
                    "name": item.get(group) or "-",
                    **{c: item.get(c) for c in GROUP_COLUMNS},
                    "top_errors": _errors_text(item.get("top_errors") or []),
                }
            )
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    def cell(value: Any) -> str:
        return "-" if value is None else str(value).replace("|", "\\|")

    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows),
    ]


def summary_markdown(summary: dict[str, Any]) -> str:
    """The report: totals, the per-model and per-provider table, the error
    breakdown, and how to download the results."""
    batch_id = summary.get("batch_id", "")
    columns = ["name", *GROUP_COLUMNS, "top_errors"]
    lines = [
        f"# Batch {batch_id}: {summary.get('status')}",
        "",
        f"- lines: {summary.get('lines')} (succeeded {summary.get('succeeded')}, "
        f"failed {summary.get('failed')}, retries {summary.get('retries')})",
        f"- tokens: input {summary.get('input_tokens')}, output {summary.get('output_tokens')}, "
        f"cached {summary.get('cached_tokens')}, reasoning {summary.get('reasoning_tokens')}",
        f"- wall time: {summary.get('wall_time_seconds')} s, "
        f"{summary.get('requests_per_second')} requests/s",
        "",
        "## Per model",
        "",
        *_table([r for r in summary_rows(summary) if r["group"] == "model"], columns),
        "",
        "## Per provider",
        "",
        *_table([r for r in summary_rows(summary) if r["group"] == "provider"], columns),
        "",
        "## Errors",
        "",
        *(
            _table(summary["errors"], ["code", "count"])
            if summary.get("errors")
            else ["No failed lines."]
        ),
        "",
        "## Results",
        "",
        f"- output and error lines: `GET /v1/batches/{batch_id}/results` (JSONL)",
        f"- the table: `GET /v1/batches/{batch_id}/results?format=parquet` (or `format=csv`)",
        f"- this summary as JSON: `GET /v1/batches/{batch_id}/summary`",
        f"- retry the failures: `POST /v1/batches/{batch_id}/retry`",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class LineProgress:
    """Lines done of a batch during one run, for the progress artifact."""

    total: int = 0
    done: int = 0
    at_start: int = 0  # done before this run started (a resumed batch)
    started: float = field(default_factory=time.monotonic)

    def rate(self, now: float | None = None) -> float | None:
        elapsed = (time.monotonic() if now is None else now) - self.started
        ran = self.done - self.at_start
        return ran / elapsed if ran > 0 and elapsed > 0 else None

    def describe(self, now: float | None = None) -> str:
        """ "1200 / 5000 lines, 240.0 requests/s, ETA 16 s"."""
        rate = self.rate(now)
        text = f"{self.done} / {self.total} lines"
        if rate is None:
            return text
        eta = (self.total - self.done) / rate
        return f"{text}, {rate:.1f} requests/s, ETA {eta:.0f} s"
