"""The benchmark report: ratios and tables from made-up numbers (no timing)."""

from __future__ import annotations

from pathlib import Path

from bench.report import (
    Run,
    Section,
    comparison_headers,
    comparison_rows,
    markdown_table,
    ratio,
    render_report,
)
from bench.scenarios import latency_section, overhead_section, start_section

PROCESSES = ("gateway", "runner", "mock", "baseline")


def runs(ours_wall: float, base_wall: float) -> list[Run]:
    return [
        Run("batchgate", ours_wall, 1000, {"gateway": 150.4, "runner": 280.0, "mock": 40.0}),
        Run("baseline: asyncio + aiohttp", base_wall, 1000, {"baseline": 41.0}),
    ]


def test_ratio_is_relative_to_the_baseline_and_safe_without_one() -> None:
    assert ratio(11.5, 10.0) == 1.15
    assert ratio(3.0, 0.0) == 0.0


def test_comparison_rows_give_rate_and_both_ratios() -> None:
    ours, base = runs(20.0, 10.0)
    rows = comparison_rows([ours, base], base, PROCESSES)
    assert rows[0] == [
        "batchgate",
        "1000",
        "20.00 s",
        "50",
        "2.00",
        "0.50",
        "150 MB",
        "280 MB",
        "40 MB",
        "-",
    ]
    assert rows[1][4:6] == ["1.00", "1.00"] and rows[1][-1] == "41 MB"
    assert len(comparison_headers(PROCESSES)) == len(rows[0])


def test_markdown_table_is_aligned() -> None:
    table = markdown_table(["a", "long header"], [["wide cell", "x"]]).splitlines()
    assert table[0] == "| a         | long header |"
    assert table[1] == "| --------- | ----------- |"
    assert table[2] == "| wide cell | x           |"


def test_targets_are_judged_from_the_ratios() -> None:
    assert latency_section(runs(11.4, 10.0), 200, 128).passed is True
    assert latency_section(runs(11.6, 10.0), 200, 128).passed is False
    assert overhead_section(runs(19.0, 10.0), 128).passed is True  # rate 0.53 x
    assert overhead_section(runs(21.0, 10.0), 128).passed is False  # rate 0.48 x
    assert start_section([1.0, 2.0, 5.0]).passed is True  # median 2 s
    assert start_section([1.0, 4.0, 5.0]).passed is False


def test_report_has_command_machine_date_and_verdicts() -> None:
    sections = [
        latency_section(runs(12.0, 10.0), 200, 128),
        Section("How cost grows", "Growth.", ["lines", "wall"], [["1,000", "2.00 s"]]),
    ]
    text = render_report(sections, command="uv run python -m bench", machine="2 CPUs", date="D")
    assert "    uv run python -m bench" in text
    assert "- Machine: 2 CPUs" in text and "- Date: D" in text
    assert "Measured: 1.20 x. **not met**" in text
    assert "## How cost grows\n\nGrowth.\n\n| lines | wall   |" in text


def test_writing_the_report_keeps_the_rate_limit_section(tmp_path: Path) -> None:
    from bench.report import write_report

    path = tmp_path / "benchmarks.md"
    path.write_text("# old\n\n<!-- rate-limits:start -->\nRL figures\n<!-- rate-limits:end -->\n")
    write_report(path, "# Benchmarks\n\nnew tables\n")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nnew tables")
    assert "<!-- rate-limits:start -->\nRL figures\n<!-- rate-limits:end -->" in text
    assert "# old" not in text
