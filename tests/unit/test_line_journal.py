"""The journal of a chunk in flight (tasks/line_journal.py) and
`execute_lines` resuming from it: lines an earlier, killed run finished are
not sent again, and each line is in the chunk's result exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from harness.fake_upstream import FakeUpstream
from storage.records import ProviderRecord
from tasks.execute import execute_lines
from tasks.line_journal import ChunkJournal, Journals
from tasks.result_lines import result_line

CHAT = "/v1/chat/completions"
PROVIDER = ProviderRecord("fast", "http://127.0.0.1:9/v1", "", max_concurrency=4)
ANSWER = {"model": "m", "echo": "c1"}


def lines(n: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"c{i}", "body": {"model": "m", "messages": []}} for i in range(n)]


def test_replay_keeps_whole_records_and_drops_the_one_a_kill_cut(tmp_path: Path) -> None:
    journal = Journals(tmp_path / "j").open(3)
    one = result_line("c1", {"status_code": 200, "request_id": "r", "body": ANSWER})
    journal.record(1, one, ok=True, provider="p", latency_ms=5.0, attempts=2)
    journal.record(0, b'{"custom_id":"c0"}\n', ok=False, provider=None, latency_ms=None, attempts=0)
    journal.close()
    with open(journal.path, "ab") as handle:  # the write SIGKILL interrupted
        handle.write(b'[2,true,"p",5.0,1]\t{"id":"batch_req_x","custom_id":"c2","resp')
    done = ChunkJournal(journal.path).replay()
    assert sorted(done) == [0, 1]
    assert done[1].line == one and done[1].ok and done[1].attempts == 2
    assert done[1].body() == ANSWER
    assert not done[0].ok and done[0].provider is None


async def test_a_resumed_chunk_sends_only_the_lines_not_journaled(tmp_path: Path) -> None:
    journals = Journals(tmp_path / "j")
    first, upstream = journals.open(0), FakeUpstream()
    chunk = lines(10)
    await execute_lines(chunk[:6], CHAT, [PROVIDER], upstream, lambda: None, journal=first)  # type: ignore[arg-type]
    first.close()  # the "killed" run finished c0..c5 and never checkpointed

    again, upstream = journals.open(0), FakeUpstream()
    result = await execute_lines(chunk, CHAT, [PROVIDER], upstream, lambda: None, journal=again)  # type: ignore[arg-type]
    again.close()
    assert sorted(upstream.done_at) == [f"c{i}" for i in range(6, 10)]  # only these were sent
    output = [orjson.loads(x) for x in bytes(result.output).splitlines()]
    assert [x["custom_id"] for x in output] == [f"c{i}" for i in range(10)]  # each once, in order
    assert [x["response"]["body"]["echo"] for x in output] == [f"c{i}" for i in range(10)]
    assert result.completed == 10 and result.model == "m"
    assert [m["custom_id"] for m in result.meta] == [f"c{i}" for i in range(10)]
    journals.discard(0)
    assert not again.path.exists()


async def test_a_stopped_line_is_not_journaled(tmp_path: Path) -> None:
    journal, upstream = Journals(tmp_path / "j").open(0), FakeUpstream()
    result = await execute_lines(
        lines(3),
        CHAT,
        [PROVIDER],
        upstream,  # type: ignore[arg-type]
        lambda: "interrupted",
        journal=journal,
    )
    journal.close()
    assert result.stopped == 3 and upstream.done_at == {}
    assert journal.replay() == {}
