"""The gateway-ceiling benchmark's arithmetic, from made-up numbers (no timing)."""

from __future__ import annotations

from bench.ceiling_model import (
    Ceilings,
    Day,
    Step,
    chunk_seconds,
    day_rows,
    knee,
    next_batches,
    percentile,
    run_lines_per_second,
)


def step(batches: int, efficiency: float, run_rate: float = 320.0) -> Step:
    seconds = 10.0
    lines = round(batches * run_rate * efficiency * seconds)
    return Step(batches, seconds, lines, lines // 1000, 50.0, 90.0, 0.5, 0.1, run_rate)


def test_the_simulated_provider_holds_a_chunk_for_its_share_of_the_runs_concurrency() -> None:
    # 64 in flight over 2 chunks: 32 lines at a time, 200 ms each
    assert chunk_seconds(1000, 0.2, 64, 2) == 6.25
    assert run_lines_per_second(0.2, 64) == 320.0
    assert step(10, 0.95).ideal == 3200.0 and round(step(10, 0.95).efficiency, 2) == 0.95


def test_the_ramp_doubles_then_splits_the_gap_then_stops() -> None:
    steps = [step(8, 1.0)]
    assert next_batches(steps, 512) == 16
    steps += [step(16, 0.99), step(32, 0.97), step(64, 0.93)]
    assert next_batches(steps, 512) == 128
    steps.append(step(128, 0.7))  # fell behind
    assert knee(steps) == (steps[3], steps[4])
    assert next_batches(steps, 512) == 96
    steps.append(step(96, 0.91))
    assert knee(steps) == (steps[5], steps[4])
    assert next_batches(steps, 512) is None  # 96..128 is close enough


def test_a_ramp_that_never_falls_behind_ends_at_its_maximum() -> None:
    steps = [step(128, 1.0), step(256, 0.98)]
    assert next_batches(steps, 300) == 300
    steps.append(step(300, 0.97))
    assert knee(steps) == (steps[2], None)
    assert next_batches(steps, 300) is None


def test_behind_from_the_first_step_has_no_knee_to_look_for() -> None:
    steps = [step(8, 0.5)]
    assert knee(steps) == (None, steps[0])
    assert next_batches(steps, 512) is None


def test_percentile_is_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def test_a_ten_million_line_day_against_the_ceilings() -> None:
    ceilings = Ceilings(
        chunk_posts=50.0,
        chunk_lines=1000,
        input_bytes=100e6,
        metadata=1000.0,
        lines=20_000.0,
        lines_is_knee=True,
    )
    rows = {row[0]: row[1:] for row in day_rows(Day(), ceilings)}
    # 10 M lines: 116/s over 24 h, 347/s over 8 busy hours, 1,042/s at 3 x
    assert rows["lines/s (running batches)"] == ["116", "347", "1,042", "20,000", "19 x"]
    assert rows["chunk posts/s (1,000-line chunks)"] == ["0.12", "0.35", "1.04", "50.00", "48 x"]
    assert rows["input MB/s to workers"][2:] == ["0.28", "100", "362 x"]
    # every one of the day's 200 batches polled once a second
    assert rows["metadata requests/s (200 batches polled 1/s)"][2:] == ["200", "1,000", "5 x"]
    unreached = Ceilings(50.0, 1000, 100e6, 1000.0, 163_840.0, lines_is_knee=False)
    first = day_rows(Day(), unreached)[0]
    assert first[4:] == [">= 163,840", ">= 157 x"]
