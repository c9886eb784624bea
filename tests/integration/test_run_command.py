"""`batchgate run` as a user runs it: a subprocess against a real
`batchgate mock-upstream` process, with 429s, 503s, Ctrl-C, kill -9 and a
terminal (tmux) to draw the bar in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars
import pytest

from batchgate.up.supervisor import Child, http_status, start_child, stop_child
from harness.live import free_port
from harness.stack import wait_for

SECRET = "sk-run-secret-4711"
ROOT = Path(__file__).resolve().parents[2]


class Mock:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child = start_child(
            "mock",
            [sys.executable, "-m", "batchgate.cli", "mock-upstream", "--port", str(self.port)]
            + ["--api-key", SECRET, "--seed", "7"],
            dict(os.environ),
            root / "logs",
        )
        wait_for(lambda: http_status(f"{self.url}/stats") == 200, "mock", 30, self.child)

    def configure(self, **fields: Any) -> None:
        defaults = {"latency_ms": 0, "failure_rate": 0, "rate_429": 0, "rate_503": 0}
        httpx.post(f"{self.url}/config", json={**defaults, **fields}).raise_for_status()
        httpx.post(f"{self.url}/stats/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats").json()


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    server = Mock(Path(tmp_path_factory.mktemp("run-mock")))
    yield server
    stop_child(server.child)


def chat(i: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]},
    }


def write(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(
        b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    )
    return path


def env() -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BATCHGATE_", "OPENAI_", "PREFECT_"))
    }
    # fast retries: the faults are the mock's, the waits need not be real ones
    return {
        **clean,
        "RUN_KEY": SECRET,
        "BATCHGATE_BACKOFF_BASE_SECONDS": "0.01",
        "BATCHGATE_BACKOFF_MAX_SECONDS": "0.05",
    }


def command(mock: Mock, source: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batchgate.cli",
        "run",
        str(source),
        "--base-url",
        f"{mock.url}/v1",
        "--api-key-env",
        "RUN_KEY",
        *extra,
    ]


def run(mock: Mock, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(mock, source, *extra),
        env=env(),
        cwd=source.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def custom_ids(path: Path) -> list[str]:
    return [orjson.loads(x)["custom_id"] for x in path.read_bytes().splitlines()]


def test_faults_are_retried_and_a_failed_line_gives_exit_1(mock: Mock, tmp_path: Path) -> None:
    mock.configure(rate_429=0.05, rate_503=0.05, retry_after=0.05)
    lines = [chat(i) for i in range(300)]
    lines[41] = chat(41, model="nowhere/model-x")  # an unknown provider: this line fails
    source = write(tmp_path / "requests.jsonl", lines)
    done = run(mock, source, "--max-concurrency", "16", "--parquet", "table.parquet")
    assert done.returncode == 1, done.stderr
    out, err = tmp_path / "requests.results.jsonl", tmp_path / "requests.errors.jsonl"
    assert sorted(custom_ids(out)) == sorted(f"req-{i}" for i in range(300) if i != 41)
    assert custom_ids(err) == ["req-41"]
    assert orjson.loads(err.read_bytes())["response"]["status_code"] == 404
    stats = mock.stats()
    assert stats["status_429"] > 0 and stats["status_5xx"] > 0  # the faults happened
    assert "whole file" in done.stdout and "300" in done.stdout  # the summary table
    assert SECRET not in done.stdout + done.stderr
    assert not (tmp_path / ".batchgate-run").exists()  # state removed once complete
    # --parquet: the gateway's results table, one row per input line in input order
    table = polars.read_parquet(tmp_path / "table.parquet")
    assert table["custom_id"].to_list() == [f"req-{i}" for i in range(300)]
    assert table.filter(~polars.col("ok"))["custom_id"].to_list() == ["req-41"]
    assert table.filter(polars.col("ok"))["provider"].unique().to_list() == ["default"]
    assert table.filter(polars.col("ok"))["attempts"].min() >= 1
    assert table["attempts"].max() >= 2  # the 429s and 503s were retried
    never_sent = table.filter(polars.col("custom_id") == "req-41")
    assert never_sent["attempts"].to_list() == [0] and never_sent["latency_ms"].is_null().all()


def test_all_lines_succeed_exit_0_and_json_progress(mock: Mock, tmp_path: Path) -> None:
    mock.configure(latency_ms=5)
    source = write(tmp_path / "in.jsonl", [chat(i) for i in range(120)])
    done = run(mock, source, "-o", "out.jsonl", "--errors", "err.jsonl", "--progress", "json")
    assert done.returncode == 0, done.stderr
    assert len(custom_ids(tmp_path / "out.jsonl")) == 120
    assert (tmp_path / "err.jsonl").read_bytes() == b""
    events = [orjson.loads(x) for x in done.stdout.splitlines()]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["exit_code"] == 0
    assert (summary["total"], summary["completed"], summary["failed"]) == (120, 120, 0)
    assert summary["models"][0]["model"] == "gpt-4o-mini"
    assert summary["models"][0]["latency_p50_ms"] >= 5
    assert all(e["event"] == "progress" for e in events[:-1])


def test_invalid_file_exits_2_with_line_numbers_and_sends_nothing(
    mock: Mock, tmp_path: Path
) -> None:
    mock.configure()
    lines: list[Any] = [chat(i) for i in range(10)]
    lines[2] = b"{not json"
    lines[6] = chat(0)  # duplicate custom_id
    source = write(tmp_path / "bad.jsonl", lines)
    done = run(mock, source)
    assert done.returncode == 2
    assert "Line 3:" in done.stderr and "Line 7:" in done.stderr
    assert "nothing was sent" in done.stderr
    assert mock.stats()["total"] == 0
    assert not (tmp_path / "bad.results.jsonl").exists()
    assert not (tmp_path / ".batchgate-run").exists()
    too_many = run(
        mock, write(tmp_path / "ok.jsonl", [chat(i) for i in range(5)]), "--max-lines", "4"
    )
    assert too_many.returncode == 2 and "more than 4 requests" in too_many.stderr
    unknown = run(mock, write(tmp_path / "e.jsonl", [chat(0)]), "--endpoint", "/v1/chat")
    assert unknown.returncode == 2 and "invalid choice: '/v1/chat'" in unknown.stderr
    assert mock.stats()["total"] == 0


def test_missing_key_variable_is_named_without_sending(mock: Mock, tmp_path: Path) -> None:
    mock.configure()
    source = write(tmp_path / "in.jsonl", [chat(0)])
    done = subprocess.run(
        [*command(mock, source)[:-1], "NO_SUCH_VAR"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "NO_SUCH_VAR" in done.stderr
    assert mock.stats()["total"] == 0


def start(mock: Mock, source: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(mock, source, "--progress", "json", *extra),
        env=env(),
        cwd=source.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_done(process: subprocess.Popen[str], share: float) -> None:
    """Read the JSON progress lines until `share` of the lines are done."""
    assert process.stdout is not None
    for raw in process.stdout:
        event = orjson.loads(raw)
        if event.get("total") and event["done"] >= share * event["total"]:
            return
    raise AssertionError(f"the run ended before {share:.0%}: {process.stderr}")


def test_ctrl_c_at_half_then_resume_sends_no_checkpointed_line_again(
    mock: Mock, tmp_path: Path
) -> None:
    mock.configure(latency_ms=20)
    total, chunk = 1000, 100
    source = write(tmp_path / "in.jsonl", [chat(i) for i in range(total)])
    extra = ("--max-concurrency", "8", "--chunk-size", str(chunk))
    first = start(mock, source, *extra)
    wait_until_done(first, 0.5)
    first.send_signal(signal.SIGINT)
    stopped_at = time.monotonic()
    first.wait(timeout=30)
    stop_seconds = time.monotonic() - stopped_at
    assert first.returncode == 130
    assert stop_seconds < 3.0  # 2 s promised; the margin is for a loaded machine
    assert not (tmp_path / "in.results.jsonl").exists()  # no partial output file
    sent_before = mock.stats()["total"]

    second = run(mock, source, *extra)
    assert second.returncode == 0, second.stderr
    ids = custom_ids(tmp_path / "in.results.jsonl")
    assert sorted(ids) == sorted(f"req-{i}" for i in range(total))  # all, each once
    sent = Counter(mock.stats()["custom_ids"])
    resent = [k for k, n in sent.items() if n > 1]
    # Lines finished in the chunks in flight were journaled: at most the
    # requests in flight when the grace ran out (none at 20 ms) run again.
    assert len(resent) <= 8
    assert sent_before >= total // 2


def test_kill_9_resends_only_the_requests_in_flight(mock: Mock, tmp_path: Path) -> None:
    mock.configure(latency_ms=20)
    total, chunk, window = 800, 100, 8
    source = write(tmp_path / "in.jsonl", [chat(i) for i in range(total)])
    extra = ("--max-concurrency", str(window), "--chunk-size", str(chunk))
    first = start(mock, source, *extra)
    wait_until_done(first, 0.5)
    first.kill()
    first.wait(timeout=30)
    before = Counter(mock.stats()["custom_ids"])
    second = run(mock, source, *extra)
    assert second.returncode == 0, second.stderr
    ids = custom_ids(tmp_path / "in.results.jsonl")
    assert sorted(ids) == sorted(f"req-{i}" for i in range(total))  # all, each once
    resent = [k for k, n in Counter(mock.stats()["custom_ids"]).items() if n > 1]
    # Two chunks were in flight, some of their lines done but not checkpointed:
    # only the requests in flight at the kill (at most the window) went again.
    assert len(resent) <= window < chunk
    assert len(before) >= total // 2


def test_ctrl_c_cuts_slow_requests_and_a_second_one_exits_at_once(
    mock: Mock, tmp_path: Path
) -> None:
    mock.configure(latency_ms=4_000)  # longer than the grace: in-flight requests are cut
    source = write(tmp_path / "in.jsonl", [chat(i) for i in range(50)])
    for presses in (1, 2):
        process = start(mock, source, "--max-concurrency", "4")
        wait_until_done(process, 0.0)  # running (the first progress line), requests in flight
        process.send_signal(signal.SIGINT)
        began = time.monotonic()
        if presses == 2:
            time.sleep(0.1)
            process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        took = time.monotonic() - began
        assert process.returncode == 130
        assert took < (3.0 if presses == 1 else 1.0)
    mock.configure()


def test_the_bar_renders_and_updates_in_a_terminal(mock: Mock, tmp_path: Path) -> None:
    mock.configure(latency_ms=25)
    source = write(tmp_path / "in.jsonl", [chat(i) for i in range(600)])
    session = f"bgrun{os.getpid()}"
    shell = " ".join(
        [
            f"cd {tmp_path} &&",
            *(f"{k}={v}" for k, v in env().items() if k.startswith(("RUN_", "BATCHGATE_"))),
        ]
        + [f"PYTHONPATH={ROOT}"]
        + [*command(mock, source, "--max-concurrency", "8")]
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "30"], check=True
    )
    try:
        subprocess.run(["tmux", "send-keys", "-t", session, shell, "Enter"], check=True)

        def screen() -> str:
            return subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        def done_count() -> int | None:
            for line in screen().splitlines():
                if "req/s" in line and "/600" in line:
                    return int(line.split("/600")[0].split()[-1])
            return None

        wait_for(lambda: (done_count() or 0) > 0, "the bar", 30)
        first = done_count()
        assert "window" in screen() and "failed" in screen() and "ETA" in screen()
        wait_for(lambda: (done_count() or 0) > (first or 0), "the bar to move", 30)
        wait_for(lambda: "whole file" in screen(), "the summary table", 60)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
