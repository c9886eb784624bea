"""No secret leaks: after a batch runs on the full stack (Prefect server,
gateway, runner, mock provider) with distinctive keys - some lines
succeeding, some failing against a dead provider and a provider that refuses
its key - no API key, admin key, internal token or provider key appears in
any HTTP answer, log file, Prefect flow-run parameter, log or artifact, or
result file; the DuckDB file holds API keys only as hashes. Provider keys are
stored in DuckDB in clear by design (flow runs need them to call the
provider) and nowhere else."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest

from gateway.supervisor import stop_child
from storage.ids import hash_key
from tests.live import free_port
from tests.stack import ADMIN_KEY, INTERNAL_TOKEN, PrefectServer, Stack

pytestmark = pytest.mark.timeout(600)
TERMINAL = {"completed", "failed", "cancelled", "expired"}
DB_NAME = "batchgate.duckdb"  # the gateway's metadata file (Settings.db_path)


def _secret(tag: str) -> str:
    return f"sk-{tag}-{secrets.token_hex(12)}"


PROVIDER_KEY = _secret("vault")
DEAD_KEY = _secret("deadend")
WRONG_KEY = _secret("wrongkey")
PROVIDER_KEYS = (PROVIDER_KEY, DEAD_KEY, WRONG_KEY)


class Recorder:
    """Every response the test saw, as text (status line, headers, body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        label = f"{response.request.method} {response.request.url.path}"
        self.seen.append((label, f"{response.status_code}\n{headers}\n{response.text}"))


def _leaks(text: bytes | str, forbidden: dict[str, str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in forbidden.items() if value.encode() in data]


@pytest.fixture(scope="module")
def run(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = Path(tmp_path_factory.mktemp("secrets"))
    recorder = Recorder()
    with (
        Stack(
            root,
            prefect_server,
            chunk_size=10,
            max_attempts=2,
            backoff_base_seconds=0.01,
            backoff_max_seconds=0.1,
        ) as stack,
        httpx.Client(base_url=stack.url, timeout=30, event_hooks={"response": [recorder]}) as http,
    ):
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        created = http.post("/admin/keys", json={"name": "secrets"}, headers=admin)
        api_key = created.json()["key"]
        # The one answer allowed to carry the clear key.
        recorder.seen.remove(recorder.seen[-1])
        stack.mock_config(api_key=PROVIDER_KEY)
        for name, url, key in (
            ("vault", f"{stack.mock_url}/v1", PROVIDER_KEY),
            ("deadend", f"http://127.0.0.1:{free_port()}/v1", DEAD_KEY),
            ("wrongkey", f"{stack.mock_url}/v1", WRONG_KEY),
        ):
            response = http.post(
                "/admin/providers",
                json={"name": name, "base_url": url, "api_key": key},
                headers=admin,
            )
            assert response.status_code == 201, response.text
        user = {"Authorization": f"Bearer {api_key}"}
        lines = [
            {
                "custom_id": f"{model}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": f"{model}/gpt-4o-mini",
                    "messages": [{"role": "user", "content": "hi"}],
                },
            }
            for model, count in (("vault", 20), ("deadend", 3), ("wrongkey", 2))
            for i in range(count)
        ]
        upload = http.post(
            "/v1/files",
            data={"purpose": "batch"},
            files={"file": ("in.jsonl", b"\n".join(orjson.dumps(x) for x in lines))},
            headers=user,
        )
        batch = http.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
            headers=user,
        ).json()
        deadline = time.monotonic() + 240
        while (batch := http.get(f"/v1/batches/{batch['id']}", headers=user).json())[
            "status"
        ] not in TERMINAL:
            assert time.monotonic() < deadline, batch
            time.sleep(0.5)
        for file_id in (batch["output_file_id"], batch["error_file_id"]):
            http.get(f"/v1/files/{file_id}/content", headers=user)
        _error_paths(http, api_key)
        prefect = _prefect_records(stack, batch["id"])
        stack.mock_config(api_key=None)
        assert stack.gateway is not None
        stop_child(stack.gateway)  # DuckDB checkpoints on close: its file is complete
        yield {
            "root": root,
            "prefect_root": prefect_server.root,
            "batch": batch,
            "api_key": api_key,
            "responses": recorder.seen,
            "prefect": prefect,
        }


def _error_paths(http: httpx.Client, api_key: str) -> None:
    """Answers that could echo a secret: near-miss keys, refused admin input,
    the provider list, internal routes with the wrong token."""
    http.get("/v1/files", headers={"Authorization": f"Bearer {api_key}x"})
    http.get("/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}x"})
    http.get("/admin/keys", headers={"Authorization": f"Bearer {api_key}"})
    http.post("/internal/providers", headers={"Authorization": f"Bearer {INTERNAL_TOKEN}x"})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    http.get("/admin/providers", headers=admin)
    http.post(
        "/admin/providers",
        json={"name": "bad/name", "base_url": "http://x", "api_key": PROVIDER_KEY},
        headers=admin,
    )
    http.post(
        "/admin/providers",
        json={"name": "bad", "base_url": "ftp://x", "api_key": PROVIDER_KEY},
        headers=admin,
    )


def _prefect_records(stack: Stack, batch_id: str) -> dict[str, Any]:
    """The batch's flow runs (parameters), their logs and artifacts, through
    the raw API (the client's filter models send nulls this server refuses).
    Waits for the summary artifact and the run's logs, which land just after
    the batch ends (Prefect ships logs in batches, every few seconds)."""
    api = stack.prefect.api_url
    deadline = time.monotonic() + 60
    while True:
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"name": {"any_": [batch_id]}}, "sort": "ID_DESC", "limit": 10},
        ).json()
        run_ids = [r["id"] for r in runs]
        artifacts = httpx.post(
            f"{api}/artifacts/filter",
            json={"flow_runs": {"id": {"any_": run_ids}}, "sort": "CREATED_DESC", "limit": 50},
        ).json()
        logs = httpx.post(
            f"{api}/logs/filter",
            json={
                "logs": {"flow_run_id": {"any_": run_ids}},
                "sort": "TIMESTAMP_ASC",
                "limit": 200,
            },
        ).json()
        done = any(r["state_type"] == "COMPLETED" for r in runs)
        if done and logs and any("summary" in (a.get("key") or "") for a in artifacts):
            return {"flow_runs": runs, "artifacts": artifacts, "logs": logs}
        assert time.monotonic() < deadline, (runs, artifacts, logs)
        time.sleep(0.5)


def _forbidden(run: dict[str, Any], *, provider_keys: bool = True) -> dict[str, str]:
    found = {"api key": run["api_key"], "admin key": ADMIN_KEY, "internal token": INTERNAL_TOKEN}
    if provider_keys:
        found.update({f"provider key {i}": key for i, key in enumerate(PROVIDER_KEYS)})
    return found


def test_the_batch_used_every_provider_and_failed_where_expected(run: dict[str, Any]) -> None:
    batch = run["batch"]
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 25, "completed": 20, "failed": 5}


def test_no_http_answer_carries_a_secret(run: dict[str, Any]) -> None:
    assert len(run["responses"]) > 10
    leaks = [(label, _leaks(text, _forbidden(run))) for label, text in run["responses"]]
    assert [x for x in leaks if x[1]] == []
    listed = next(t for label, t in run["responses"] if label == "GET /admin/providers")
    shown = {p["name"]: p["api_key"] for p in orjson.loads(listed.split("\n")[-1])["data"]}
    assert shown["vault"] == f"sk-...{PROVIDER_KEY[-4:]}"


def test_prefect_parameters_logs_and_artifacts_carry_no_secret(run: dict[str, Any]) -> None:
    prefect = run["prefect"]
    assert prefect["flow_runs"] and prefect["artifacts"] and prefect["logs"]
    for run_record in prefect["flow_runs"]:
        assert run_record["parameters"] == {"batch_id": run["batch"]["id"]}
    assert _leaks(orjson.dumps(prefect), _forbidden(run)) == []


def test_no_log_or_file_on_disk_carries_a_secret(run: dict[str, Any]) -> None:
    scanned = 0
    for root in (run["root"], run["prefect_root"]):
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            # Provider keys live in DuckDB by design; API and admin keys never.
            in_duckdb = path.parent == run["root"] / "data" and path.name.startswith(DB_NAME)
            forbidden = _forbidden(run, provider_keys=not in_duckdb)
            assert _leaks(path.read_bytes(), forbidden) == [], path
            scanned += 1
    # The scan does find a key where one is: the provider key in DuckDB.
    assert PROVIDER_KEY.encode() in (run["root"] / "data" / DB_NAME).read_bytes()
    logs = {p.name for p in (run["root"] / "logs").iterdir()}
    assert any("gateway" in n for n in logs) and any("runner" in n for n in logs), logs
    assert scanned > 5


def test_api_keys_are_stored_as_hashes(run: dict[str, Any]) -> None:
    with duckdb.connect(str(run["root"] / "data" / DB_NAME), read_only=True) as con:
        hashes = {row[0] for row in con.execute("SELECT key_hash FROM api_keys").fetchall()}
    assert hash_key(run["api_key"]) in hashes
    assert run["api_key"] not in hashes
