"""Writes `make soak` results into docs/reliability.md, only between the
crash-matrix markers (other sections of that page belong to others).

Inside the section, each soak module owns a block of its own (inner
markers), so the crash matrix and the upstream-fault runs update separately.
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
