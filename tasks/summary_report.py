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


# A group with no name: a line without a model, or never sent to a provider.
# Words, not "-": the Prefect UI renders table cells as markdown, where a
# lone "-" is a list bullet.
UNNAMED = {"model": "(none)", "provider": "(not sent)"}


def _errors_text(errors: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['code']}: {e['count']}" for e in errors) or "none"


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and one per provider, the same columns for both."""
    rows = []
    for group in ("model", "provider"):
        for item in summary.get(f"by_{group}") or []:
            rows.append(
                {
                    "group": group,
                    "name": item.get(group) or UNNAMED[group],
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


def _figure(value: Any) -> str:
    """A count with thousands separators; a latency in whole milliseconds
    (one decimal under 10 ms)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
    return f"{value:,}"


def _figures(item: dict[str, Any], *names: str) -> str:
    if all(item.get(n) is None for n in names):
        return "-"
    return " / ".join(_figure(item.get(n)) for n in names)


# The report's group columns: the table artifact's figures, several to a
# cell, and the error codes in their own section, so the tables fit the
# Prefect UI's page without scrolling sideways.
REPORT_COLUMNS = (
    "lines (ok / failed)",
    "tokens in / out",
    "cached / reasoning",
    "latency ms p50 / p95 / max",
    "retries",
)


def _report_rows(summary: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [
        dict(
            zip(
                (group, *REPORT_COLUMNS),
                (
                    item.get(group) or UNNAMED[group],
                    f"{_figure(item.get('lines'))} ({_figures(item, 'succeeded', 'failed')})",
                    _figures(item, "input_tokens", "output_tokens"),
                    _figures(item, "cached_tokens", "reasoning_tokens"),
                    _figures(item, "latency_ms_p50", "latency_ms_p95", "latency_ms_max"),
                    _figure(item.get("retries")),
                ),
                strict=True,
            )
        )
        for item in summary.get(f"by_{group}") or []
    ]


def _error_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each error code with its count and the models it came from (from
    each model's top codes)."""
    return [
        {
            "code": error["code"],
            "count": _figure(error["count"]),
            "by model": ", ".join(
                f"{m.get('model') or UNNAMED['model']}: {_figure(e['count'])}"
                for m in summary.get("by_model") or []
                for e in m.get("top_errors") or []
                if e["code"] == error["code"]
            ),
        }
        for error in summary.get("errors") or []
    ]


def _counts(summary: dict[str, Any]) -> dict[str, str]:
    """The summary's batch-wide counts as the report shows them."""
    names = (*USAGE_COUNTS, "retries", "wall_time_seconds")
    return {name: _figure(summary.get(name)) for name in names}


def summary_headline(summary: dict[str, Any]) -> str:
    """The batch's own figures in one line, for the table artifact's
    description: its rows are per model and per provider."""
    n = _counts(summary)
    return (
        f"{summary.get('batch_id', '')} {summary.get('status')}: {n['lines']} lines "
        f"({n['succeeded']} ok, {n['failed']} failed) in {n['wall_time_seconds']} s, "
        f"{summary.get('requests_per_second')} requests/s"
    )


def summary_markdown(summary: dict[str, Any]) -> str:
    """The report: totals, the per-model and per-provider table, the error
    breakdown, and how to download the results."""
    batch_id = summary.get("batch_id", "")
    n = _counts(summary)
    lines = [
        f"# Batch {batch_id}: {summary.get('status')}",
        "",
        f"- lines: {n['lines']} (succeeded {n['succeeded']}, failed {n['failed']}, "
        f"retries {n['retries']})",
        f"- tokens: input {n['input_tokens']}, output {n['output_tokens']}, "
        f"cached {n['cached_tokens']}, reasoning {n['reasoning_tokens']}",
        f"- wall time: {n['wall_time_seconds']} s, {summary.get('requests_per_second')} requests/s",
        "",
        "## Per model",
        "",
        *_table(_report_rows(summary, "model"), ["model", *REPORT_COLUMNS]),
        "",
        "## Per provider",
        "",
        *_table(_report_rows(summary, "provider"), ["provider", *REPORT_COLUMNS]),
        "",
        "## Errors",
        "",
        *(
            _table(_error_rows(summary), ["code", "count", "by model"])
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

    def begin(self, total: int, done: int) -> None:
        """Execution starts: the rate counts from here, not from the flow
        run's start (claim and validation would make it read low and the
        ETA long), and lines done before (a resumed batch) are not in it."""
        self.total, self.done, self.at_start = total, done, done
        self.started = time.monotonic()

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
