"""The fake provider (`batchgate mock-upstream`) speaks enough OpenAI for the SDK,
streams when asked (so tests can prove the gateway never asks), and reports
what it saw."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from batchgate.mock_provider.server import MockConfig, serve_mock_in_thread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_mock_in_thread(MockConfig(seed=1)) as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url.removesuffix("/v1")) as client:
        client.post("/stats/reset")
        yield client
        client.post(
            "/config",
            json={
                "latency_ms": 0,
                "failure_rate": 0,
                "rate_429": 0,
                "rps_limit": None,
                "api_key": None,
                "missing_request_id_rate": 0,
            },
        )


def test_chat_completion_is_realistic_and_deterministic(http: httpx.Client) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 400}]}
    first = http.post("/v1/chat/completions", json=body)
    second = http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200 and first.headers["x-request-id"]
    data = first.json()
    assert data["object"] == "chat.completion" and data["model"] == "gpt-4o-mini"
    assert data["choices"][0]["message"]["content"]
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] == 100  # 400 characters, four per token
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 25
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert second.json()["usage"] == usage
    assert second.json()["id"] != data["id"]


def test_embeddings_accept_string_and_list(http: httpx.Client) -> None:
    one = http.post("/v1/embeddings", json={"model": "emb", "input": "hello"}).json()
    many = http.post("/v1/embeddings", json={"model": "emb", "input": ["hello", "world"]}).json()
    assert one["object"] == "list" and len(one["data"]) == 1
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert many["data"][0]["embedding"] == one["data"][0]["embedding"]
    assert many["data"][1]["embedding"] != one["data"][0]["embedding"]
    assert all(-1.0 <= x <= 1.0 for x in one["data"][0]["embedding"])
    assert many["usage"]["prompt_tokens"] == many["usage"]["total_tokens"] == 4


def test_responses_completions_and_moderations(http: httpx.Client) -> None:
    response = http.post("/v1/responses", json={"model": "o3-mini", "input": "y" * 40}).json()
    assert response["object"] == "response" and response["status"] == "completed"
    usage = response["usage"]
    assert usage["input_tokens"] == 10
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["cached_tokens"] == 2
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0  # a reasoning model
    assert response["output"][0]["content"][0]["text"]

    completion = http.post("/v1/completions", json={"model": "davinci", "prompt": ["a", "b"]})
    assert completion.json()["object"] == "text_completion"
    assert len(completion.json()["choices"]) == 2

    moderation = http.post("/v1/moderations", json={"input": ["fine", "flag-me"]}).json()
    assert [r["flagged"] for r in moderation["results"]] == [False, True]
    assert http.get("/stats").json()["routes"] == {
        "/v1/responses": 1,
        "/v1/completions": 1,
        "/v1/moderations": 1,
    }


def test_stream_true_answers_server_sent_events(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "m", "stream": True, "messages": []}
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert '"chat.completion.chunk"' in events[0]
    assert http.get("/stats").json()["streamed"] == 1


def test_bad_requests_get_the_error_envelope(http: httpx.Client) -> None:
    bad_json = http.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["message"]
    no_model = http.post("/v1/chat/completions", json={"messages": []})
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"


def test_runtime_config_failures_and_429_with_retry_after(http: httpx.Client) -> None:
    assert http.post("/config", json={"failure_rate": 1.0}).json()["failure_rate"] == 1.0
    failed = http.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"

    http.post("/config", json={"failure_rate": 0, "rate_429": 1.0, "retry_after": 3})
    limited = http.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["type"] == "rate_limit_error"

    counts = http.get("/stats").json()
    assert (counts["status_5xx"], counts["status_429"], counts["total"]) == (1, 1, 2)
    assert http.post("/config", json={"nonsense": 1}).status_code == 400


def test_rps_limit_answers_429_beyond_the_bucket(http: httpx.Client) -> None:
    http.post("/config", json={"rps_limit": 0.5})  # a bucket of one, refilled every 2 s
    first, second = (
        http.post("/v1/embeddings", json={"model": "e", "input": "x"}) for _ in range(2)
    )
    assert first.status_code == 200
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(second.headers["retry-after"]) >= 1
    assert 0 < int(second.headers["retry-after-ms"]) <= 2000


def test_api_key_required_when_set(http: httpx.Client) -> None:
    http.post("/config", json={"api_key": "sk-mock"})
    body = {"model": "m", "messages": []}
    assert http.post("/v1/chat/completions", json=body).status_code == 401
    ok = http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-mock"})
    assert ok.status_code == 200


def test_counts_requests_per_custom_id(http: httpx.Client) -> None:
    body = {"model": "m", "messages": []}
    for custom_id in ("a", "b", "a"):
        http.post("/v1/chat/completions", json=body, headers={"X-Batchgate-Custom-Id": custom_id})
    counts = http.get("/stats").json()
    assert counts["custom_ids"] == {"a": 2, "b": 1}
    assert counts["duplicates_ok"] == ["a"]
    assert http.post("/stats/reset").json()["total"] == 0


def test_request_ids_sent_on_every_answer_unless_left_out(http: httpx.Client) -> None:
    """Like OpenAI, an `x-request-id` on errors too; like many compatible servers,
    none at all when asked. The caller's `X-Client-Request-Id` is recorded."""
    body = {"model": "m", "messages": []}
    assert http.post("/v1/chat/completions", json={"messages": []}).headers["x-request-id"]
    http.post("/config", json={"missing_request_id_rate": 1.0})
    sent = [
        http.post(
            "/v1/chat/completions",
            json=body,
            headers={"X-Batchgate-Custom-Id": "a", "X-Client-Request-Id": client_id},
        )
        for client_id in ("req_1", "req_2")
    ]
    assert [r.status_code for r in sent] == [200, 200]
    assert all("x-request-id" not in r.headers for r in sent)
    assert http.get("/stats/client-request-ids").json() == {"a": ["req_1", "req_2"]}
    http.post("/stats/reset")
    assert http.get("/stats/client-request-ids").json() == {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_serves_the_openai_sdk() -> None:
    port = _free_port()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgate.cli",
            "--log-level",
            "warning",
            "mock-upstream",
            "--port",
            str(port),
            "--api-key",
            "sk-cli",
            "--latency-ms",
            "5",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "mock-upstream did not start"
                time.sleep(0.1)

        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli", max_retries=0)
        chat = sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}]
        )
        assert chat.model == "gpt-4o-mini"
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.total_tokens > 0

        embedded = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 8
        assert embedded.usage.prompt_tokens == 2

        wrong = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-no", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        if proc.stdout:
            proc.stdout.close()
