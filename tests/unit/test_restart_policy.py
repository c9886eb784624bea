"""The restart policy of `batchgate up` (batchgate/up/supervisor.py `restart_step`):
backoff, its reset after a stable run, and the crash-loop limit."""

from __future__ import annotations

from batchgate.up.supervisor import RestartPolicy, RestartRecord, restart_step

POLICY = RestartPolicy(first_delay=1, max_delay=30, max_restarts=5, window=300, stable_after=60)


def crash_quickly(times: list[float]) -> list[float | None]:
    """The delays chosen for a child that dies 5 s after each (re)start at `times`."""
    record, delays = RestartRecord(), []
    for at in times:
        step = restart_step(POLICY, record, started_at=at - 5, died_at=at)
        record = step.record
        delays.append(step.delay)
    return delays


def test_the_delay_doubles_up_to_the_maximum() -> None:
    policy = RestartPolicy(first_delay=1, max_delay=30, max_restarts=100, window=300)
    record, delays = RestartRecord(), []
    for n in range(8):
        step = restart_step(policy, record, started_at=n * 10.0, died_at=n * 10.0 + 1)
        record = step.record
        delays.append(step.delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert record.total == 8


def test_more_restarts_than_the_limit_within_the_window_is_a_crash_loop() -> None:
    assert crash_quickly([10, 20, 30, 40, 50, 60]) == [1, 2, 4, 8, 16, None]


def test_deaths_older_than_the_window_do_not_count() -> None:
    # Five quick deaths, then a sixth long after the first ones left the window.
    delays = crash_quickly([10, 20, 30, 40, 50, 400])
    assert delays[-1] is not None


def test_a_child_that_stayed_up_starts_a_new_streak() -> None:
    record = RestartRecord()
    for at in (10.0, 20.0, 30.0):
        record = restart_step(POLICY, record, started_at=at - 5, died_at=at).record
    assert record.streak == 3
    # Up for two minutes before dying again: back to the first delay.
    step = restart_step(POLICY, record, started_at=40, died_at=160)
    assert step.delay == 1
    assert step.record.streak == 1
    assert step.record.total == 4


def test_the_first_death_restarts_after_the_first_delay() -> None:
    step = restart_step(POLICY, RestartRecord(), started_at=0, died_at=1000)
    assert step.delay == 1
    assert step.record == RestartRecord(times=(1000,), streak=1, total=1)
