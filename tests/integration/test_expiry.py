"""A batch whose completion window ends while it runs ends `expired`:
finished lines kept, the rest `batch_expired`.

The window is `completion_window_seconds` (24 h by default, a few seconds
here), so the whole path runs: create over HTTP, the run sees the deadline
between requests, finalize writes both files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from harness.inline_gateway import Env
from harness.lines import chat_line

WINDOW_SECONDS = 3
LINES = 800


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    running = Env(Path(tmp_path_factory.mktemp("expiry")), completion_window_seconds=WINDOW_SECONDS)
    yield running
    running.close()


def test_a_batch_past_its_window_expires_keeping_finished_lines(env: Env) -> None:
    # 800 lines at 100 ms with at most 16 in flight: ~5 s of work, more than
    # the 3 s window.
    httpx.post(f"{env.mock.url}/config", json={"latency_ms": 100}).raise_for_status()
    env.admin(
        "POST",
        "/admin/providers",
        json={
            "name": "openai",
            "base_url": f"{env.mock.url}/v1",
            "api_key": "sk-mock",
            "default": True,
            "max_concurrency": 16,
        },
    )
    key = env.create_key("expiry")
    batch = env.create_batch(key, env.upload(key, [chat_line(f"r{i}", "hi") for i in range(LINES)]))
    assert batch["expires_at"] - batch["created_at"] == WINDOW_SECONDS
    done = env.wait(key, batch["id"], timeout=60)
    assert done["status"] == "expired" and done["expired_at"]
    out = [orjson.loads(x) for x in env.content(key, done["output_file_id"]).splitlines()]
    err = [orjson.loads(x) for x in env.content(key, done["error_file_id"]).splitlines()]
    assert out and err
    assert {x["error"]["code"] for x in err} == {"batch_expired"}
    assert sorted(x["custom_id"] for x in out + err) == sorted(f"r{i}" for i in range(LINES))
    assert done["request_counts"] == {"total": LINES, "completed": len(out), "failed": len(err)}
