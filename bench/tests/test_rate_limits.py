"""The rate-limits benchmark's arithmetic (bench/rate_limits.py)."""

from __future__ import annotations

from bench.rate_limits import Sample, execution_rate, fair_shares, replace_section


def test_fair_shares_count_only_while_both_batches_ran() -> None:
    samples = [
        Sample(0.0, 0, 0, {"a-": 0, "b-": 0}),
        Sample(1.0, 50, 0, {"a-": 40, "b-": 0}),  # b not started: window not open
        Sample(2.0, 100, 0, {"a-": 60, "b-": 20}),
        Sample(3.0, 200, 5, {"a-": 100, "b-": 60}),
        Sample(4.0, 260, 5, {"a-": 120, "b-": 120}),  # b finished: window closed
        Sample(5.0, 300, 5, {"a-": 160, "b-": 120}),
    ]
    shares, window = fair_shares(samples, ["a-", "b-"])
    assert shares == {"a-": 0.375, "b-": 0.625} and window == 2.0


def test_execution_rate_from_first_request_to_last_answer() -> None:
    samples = [Sample(0.0, 0, 0, {"r-": 0}), Sample(1.0, 5, 0, {"r-": 0})]
    samples += [Sample(6.0, 1100, 100, {"r-": 1000}), Sample(7.0, 1100, 100, {"r-": 1000})]
    assert execution_rate(samples, "r-", 1000) == (200.0, 5.0)


def test_docs_section_replaced_between_markers_rest_kept() -> None:
    first = replace_section("# Benchmarks\n\n## Throughput\n\nx\n", "## Rate limits\n\nold")
    assert first.startswith("# Benchmarks\n\n## Throughput\n\nx\n\n<!-- rate-limits:start -->")
    second = replace_section(first + "\n## Later\n", "## Rate limits\n\nnew")
    assert "new" in second and "old" not in second
    assert "## Throughput" in second and second.endswith("## Later\n")
