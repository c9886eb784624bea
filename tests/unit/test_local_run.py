"""The pure parts of `batchgate run`: where requests go, where files land,
what makes two runs the same run."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.records import ProviderRecord
from tasks.local_run import (
    RUN_CHUNK_SIZE,
    default_errors_path,
    default_output_path,
    infer_endpoint,
    run_chunk_size,
    run_key,
)
from tasks.run_meter import ModelStats
from tasks.run_providers import RunError, resolve_providers
from tasks.settings import ProviderConfig, Settings

KEY = "sk-never-shown-123"


def test_flags_name_the_url_and_the_variable_holding_the_key() -> None:
    [p] = resolve_providers(
        Settings(),
        {"MY_KEY": KEY},
        base_url="http://h/v1",
        api_key_env="MY_KEY",
        max_concurrency=7,
    )
    assert (p.base_url, p.api_key, p.is_default, p.max_concurrency) == ("http://h/v1", KEY, True, 7)


def test_a_missing_variable_is_named_and_no_key_is_shown() -> None:
    with pytest.raises(RunError) as caught:
        resolve_providers(Settings(), {"OTHER": KEY}, base_url="http://h/v1", api_key_env="MY_KEY")
    assert "MY_KEY" in str(caught.value) and KEY not in str(caught.value)


def test_config_providers_with_the_named_one_as_default() -> None:
    settings = Settings(
        providers=[
            ProviderConfig(name="a", base_url="http://a/v1", api_key="ka", default=True),
            ProviderConfig(name="b", base_url="http://b/v1", api_key="kb", max_concurrency=3),
        ]
    )
    records = resolve_providers(settings, {}, provider="b")
    assert {p.name: p.is_default for p in records} == {"a": False, "b": True}
    assert {p.name: p.is_default for p in resolve_providers(settings, {})} == {
        "a": True,
        "b": False,
    }
    with pytest.raises(RunError, match="not in BATCHGATE_CONFIG"):
        resolve_providers(settings, {}, provider="c")


def test_environment_fallback_and_no_provider_at_all() -> None:
    [p] = resolve_providers(Settings(), {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://x/v1"})
    assert (p.base_url, p.api_key) == ("http://x/v1", KEY)
    [q] = resolve_providers(Settings(), {"OPENAI_API_KEY": KEY})
    assert q.base_url == "https://api.openai.com/v1"
    with pytest.raises(RunError, match="no provider"):
        resolve_providers(Settings(), {})


def test_default_paths_sit_next_to_the_input() -> None:
    out = default_output_path(Path("/d/requests.jsonl"))
    assert out == Path("/d/requests.results.jsonl")
    assert default_errors_path(out) == Path("/d/requests.errors.jsonl")
    assert default_errors_path(Path("/d/out.jsonl")) == Path("/d/out.errors.jsonl")


def test_same_bytes_and_endpoint_are_the_same_run(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    a.write_bytes(b'{"x": 1}\n')
    b.write_bytes(b'{"x": 1}\n')
    c.write_bytes(b'{"x": 2}\n')
    chat = "/v1/chat/completions"
    assert run_key(a, chat) == run_key(b, chat)
    assert run_key(a, chat) != run_key(c, chat)
    assert run_key(a, chat) != run_key(a, "/v1/embeddings")


def test_endpoint_comes_from_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'\n{"url": "/v1/embeddings"}\n')
    assert infer_endpoint(path) == "/v1/embeddings"
    path.write_bytes(b"{broken\n")
    assert infer_endpoint(path) == "/v1/chat/completions"


def test_an_interrupted_run_keeps_its_checkpoints_and_the_next_one_finishes(
    tmp_path: Path,
) -> None:
    """The stop reason "interrupted": no finalize, no output file, done chunks
    kept; the same run again sends only the rest, each line once."""
    import httpx
    import orjson

    from batchgate.mock_provider.server import MockConfig, create_mock_app
    from harness.servers import ThreadedServer
    from tasks.local_run import EXIT_INTERRUPTED, LocalRun, RunOptions, run_settings

    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(60)
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))

    class StopAfterOneChunk(LocalRun):
        def _chunk_recorded(self, completed: int, failed: int) -> None:
            super()._chunk_recorded(completed, failed)
            self.interrupted = True  # as Ctrl-C does, right after the first checkpoint

    with ThreadedServer(create_mock_app(MockConfig(latency_ms=5))) as mock:
        options = RunOptions(
            input_path=source,
            output_path=tmp_path / "out.jsonl",
            errors_path=tmp_path / "err.jsonl",
            state_root=tmp_path / "state",
            endpoint="/v1/chat/completions",
            providers=[],
            chunk_size=10,
        )
        settings = run_settings(options)
        options.providers = resolve_providers(
            settings, {}, base_url=f"{mock.url}/v1", max_concurrency=4
        )
        first = StopAfterOneChunk(options, settings).execute()
        assert (first.exit_code, first.status) == (EXIT_INTERRUPTED, "interrupted")
        assert not options.output_path.exists() and not options.errors_path.exists()
        sent_first = httpx.get(f"{mock.url}/stats").json()["custom_ids"]

        second = LocalRun(options, settings)
        outcome = second.execute()
        assert (outcome.exit_code, outcome.status) == (0, "completed")
        assert second.progress.done_before >= 10  # the checkpoint was found
        out = [orjson.loads(x)["custom_id"] for x in options.output_path.read_bytes().splitlines()]
        assert out == [f"req-{i}" for i in range(60)]  # all, once, in input order
        sent = httpx.get(f"{mock.url}/stats").json()["custom_ids"]
        checkpointed = [c for c, n in sent_first.items() if sent[c] == n]
        assert len(checkpointed) >= 10  # those were not sent again
        assert not options.state_root.exists()


def test_a_chunk_holds_at_least_what_can_be_in_flight() -> None:
    """A kill loses the requests in flight (the rest is journaled): with
    more of them than a default chunk, chunks grow, so that stays one chunk."""
    small = [ProviderRecord("a", "http://a/v1", "", max_concurrency=128)]
    assert run_chunk_size(small) == RUN_CHUNK_SIZE
    wide = [ProviderRecord(n, f"http://{n}/v1", "", max_concurrency=1500) for n in "ab"]
    assert run_chunk_size(wide) == 3000


def test_latency_percentiles_within_one_percent_from_flat_memory() -> None:
    """The run's summary (p50/p95 per model) from 1 %-wide buckets, not a list
    that grows by a number per line."""
    stats = ModelStats()
    latencies = [0.001 * (i % 997 + 1) for i in range(50_000)]  # 1 ms .. 997 ms
    for seconds in latencies:
        stats.add_latency(seconds)
    ordered = sorted(latencies)
    for share in (0.5, 0.95):
        exact = ordered[int(share * len(ordered))]
        got = stats.percentile(share)
        assert got is not None and exact <= got <= exact * 1.01
    assert len(stats.latency_buckets) < 800
    assert ModelStats().percentile(0.5) is None
