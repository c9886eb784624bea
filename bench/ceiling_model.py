"""The arithmetic of the gateway-ceiling benchmark (bench/gateway_ceiling.py).

Pure functions only: how long a simulated provider takes per chunk, how a
ramp step is judged against the ideal, where the knee is, which step to try
next, and what a day of N lines asks of the gateway against the measured
ceilings. Unit-tested with made-up numbers (bench/tests/test_ceiling_model.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A ramp step whose throughput is below this share of what its runs would do
# against an infinitely fast gateway is past the knee.
EFFICIENCY_FLOOR = 0.9


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def run_lines_per_second(latency_s: float, run_concurrency: int) -> float:
    """A flow run's throughput when only the provider limits it: `run_concurrency`
    requests in flight, each answered after `latency_s`."""
    return run_concurrency / latency_s


def chunk_seconds(
    chunk_lines: int, latency_s: float, run_concurrency: int, chunk_parallelism: int
) -> float:
    """How long the provider keeps one chunk: a run works on `chunk_parallelism`
    chunks at once and they share its `run_concurrency` requests in flight."""
    share = run_concurrency / chunk_parallelism
    return chunk_lines * latency_s / share


@dataclass(frozen=True)
class Step:
    """One ramp step: `batches` runs at once, measured over `seconds`."""

    batches: int
    seconds: float
    lines: int  # lines of the chunks whose post was answered in the window
    posts: int
    post_p50_ms: float
    post_p99_ms: float
    gateway_cpu: float  # share of one core, 1.0 = a whole core
    loadgen_cpu: float
    ideal_run_rate: float  # lines/s of one run against an instant gateway

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    @property
    def ideal(self) -> float:
        return self.batches * self.ideal_run_rate

    @property
    def efficiency(self) -> float:
        return self.rate / self.ideal if self.ideal > 0 else 0.0

    @property
    def saturated(self) -> bool:
        return self.efficiency < EFFICIENCY_FLOOR


def knee(steps: Sequence[Step]) -> tuple[Step | None, Step | None]:
    """(the largest step that still kept up, the smallest that did not):
    the gateway becomes the bottleneck between the two. Either may be None
    (saturated from the first step; never saturated within the ramp)."""
    ordered = sorted(steps, key=lambda s: s.batches)
    first_bad = next((s for s in ordered if s.saturated), None)
    limit = first_bad.batches if first_bad else math.inf
    good = [s for s in ordered if not s.saturated and s.batches < limit]
    return (good[-1] if good else None), first_bad


def next_batches(steps: Sequence[Step], maximum: int) -> int | None:
    """The next step of the ramp (`steps` in the order they ran): double
    until a step falls behind, then one step halfway between the last that
    kept up and that one; None: done."""
    if not steps:
        return None
    good, bad = knee(steps)
    if bad is None:
        top = max(s.batches for s in steps)
        return min(top * 2, maximum) if top < maximum else None
    first_bad = next(s for s in steps if s.saturated)
    if good is None or steps[-1] is not first_bad:
        return None  # behind from the start, or the halfway step has run
    middle = (good.batches + bad.batches) // 2
    return middle if good.batches < middle < bad.batches else None


@dataclass(frozen=True)
class Ceilings:
    """What the gateway sustained, as the benchmark measured it."""

    chunk_posts: float  # chunk checkpoints/s at `chunk_lines` lines each
    chunk_lines: int
    input_bytes: float  # bytes/s of chunk input served to workers
    metadata: float  # public metadata requests/s (the slowest kind measured)
    lines: float  # lines/s of running batches at the knee, or the most the ramp reached
    lines_is_knee: bool  # False: the ramp ended before the gateway fell behind


@dataclass(frozen=True)
class Day:
    """A day's volume and how it arrives."""

    lines: int = 10_000_000
    busy_hours: float = 8.0  # the day's lines arrive within these hours
    peak_factor: float = 3.0  # the busiest minutes against the busy hours' mean
    input_bytes_per_line: int = 265  # harness/workload.py's chat lines
    output_bytes_per_line: int = 625  # the mock's answers as output lines
    lines_per_batch: int = 50_000

    @property
    def rates(self) -> tuple[float, float, float]:
        """Lines/s: the 24-hour average, the busy hours' mean, the peak."""
        busy = self.lines / (self.busy_hours * 3600)
        return self.lines / 86_400, busy, busy * self.peak_factor

    @property
    def batches(self) -> int:
        """The day's batches; the worst case has all of them live at once."""
        return math.ceil(self.lines / self.lines_per_batch)


def day_rows(day: Day, ceilings: Ceilings) -> list[list[str]]:
    """What the day asks of one gateway (24 h average, busy hours, peak)
    against what it sustained, and the headroom at the peak."""

    def row(what: str, per_line: float, ceiling: float, scale: float = 1.0, floor: bool = False):
        need = [rate * per_line for rate in day.rates]
        headroom = ceiling / need[2] if need[2] > 0 else math.inf
        mark = ">= " if floor else ""
        return [
            what,
            *(_fmt(v / scale) for v in need),
            mark + _fmt(ceiling / scale),
            f"{mark}{headroom:,.0f} x",
        ]

    lines = ceilings.chunk_lines
    rows = [
        row("lines/s (running batches)", 1.0, ceilings.lines, floor=not ceilings.lines_is_knee),
        row(f"chunk posts/s ({lines:,}-line chunks)", 1 / lines, ceilings.chunk_posts),
        row("input MB/s to workers", day.input_bytes_per_line, ceilings.input_bytes, 1e6),
        row(
            "output MB/s from workers",
            day.output_bytes_per_line,
            ceilings.chunk_posts * lines * day.output_bytes_per_line,
            1e6,
        ),
    ]
    polls = day.batches  # every batch of the day live at once, each polled once a second
    rows.append(
        [
            f"metadata requests/s ({polls} batches polled 1/s)",
            *([_fmt(polls)] * 3),
            _fmt(ceilings.metadata),
            f"{ceilings.metadata / polls:,.0f} x",
        ]
    )
    return rows


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
