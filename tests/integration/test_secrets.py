"""No secret leaks: after a batch runs on the full stack (Prefect server,
gateway, runner, mock provider) with distinctive keys - some lines
succeeding, some failing against a dead provider and a provider that refuses
its key - no API key, admin key, internal token or provider key appears in
any HTTP answer, log file, Prefect flow-run parameter, log or artifact, or
file on disk: provider keys are stored encrypted (storage/secrets.py), API
keys as hashes. Every path under the data directory is owner-only (0700 /
0600) although the processes start with umask 022, and a rotation of the
secret key keeps the provider working while the old key opens nothing.
`batchgate up` itself is checked the same way, over an older install's data
directory (clear provider key, 0755/0644 paths)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest
from cryptography.fernet import Fernet, InvalidToken

from batchgate.up.supervisor import start_child, stop_child
from harness.live import free_port
from harness.stack import ADMIN_KEY, INTERNAL_TOKEN, PrefectServer, Stack
from harness.up import Output, clean_env, wait_ready
from storage.ids import hash_key
from storage.metadata import MetadataStore

pytestmark = pytest.mark.timeout(600)
TERMINAL = {"completed", "failed", "cancelled", "expired"}
DB_NAME = "batchgate.duckdb"  # the gateway's metadata file (Settings.db_path)
ROOT = Path(__file__).resolve().parents[2]


def _secret(tag: str) -> str:
    return f"sk-{tag}-{secrets.token_hex(12)}"


PROVIDER_KEY = _secret("vault")
DEAD_KEY = _secret("deadend")
WRONG_KEY = _secret("wrongkey")
PROVIDER_KEYS = (PROVIDER_KEY, DEAD_KEY, WRONG_KEY)
LEGACY_KEY = _secret("legacy")
FRESH_KEY = _secret("fresh")


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


def _chat_lines(counts: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{model}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": f"{model}/gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
            },
        }
        for model, count in counts.items()
        for i in range(count)
    ]


def _run_batch(http: httpx.Client, user: dict[str, str], lines: list[Any]) -> dict[str, Any]:
    """Upload, create, wait until terminal, download both result files."""
    upload = http.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", b"\n".join(orjson.dumps(x) for x in lines))},
        headers=user,
    )
    assert upload.status_code == 200, upload.text
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
        if file_id:
            http.get(f"/v1/files/{file_id}/content", headers=user)
    return batch


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    """Start children under the usual shell umask: batchgate must not rely on it."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _rotate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchgate.cli", "rotate-secret-key"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stored_provider_keys(db: Path) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return dict(con.execute("SELECT name, api_key FROM providers").fetchall())


@pytest.fixture(scope="module")
def run(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = Path(tmp_path_factory.mktemp("secrets"))
    recorder = Recorder()
    with (
        _umask(0o022),
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
        batch = _run_batch(http, user, _chat_lines({"vault": 20, "deadend": 3, "wrongkey": 2}))
        _error_paths(http, api_key)
        prefect = _prefect_records(stack, batch["id"])
        refused = _rotate(stack.env())  # the gateway still holds the database
        assert stack.gateway is not None
        stop_child(stack.gateway)  # DuckDB checkpoints on close: its file is complete

        data = root / "data"
        before = {"key": (data / "secret_key").read_text(), **_stored_provider_keys(data / DB_NAME)}
        rotation = _rotate(stack.env())
        stack.start_gateway()
        after_rotation = _run_batch(http, user, _chat_lines({"vault": 5}))
        stack.mock_config(api_key=None)
        stop_child(stack.gateway)
        yield {
            "root": root,
            "prefect_root": prefect_server.root,
            "batch": batch,
            "api_key": api_key,
            "responses": recorder.seen,
            "prefect": prefect,
            "refused": refused,
            "rotation": rotation,
            "before_rotation": before,
            "after_rotation": after_rotation,
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


def _forbidden(run: dict[str, Any]) -> dict[str, str]:
    found = {"api key": run["api_key"], "admin key": ADMIN_KEY, "internal token": INTERNAL_TOKEN}
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


def _secret_leaks(root: Path, forbidden: dict[str, str]) -> list[tuple[Path, list[str]]]:
    """Every file under `root` holding one of `forbidden` in clear, byte for byte."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    assert files, root
    return [(p, found) for p in files if (found := _leaks(p.read_bytes(), forbidden))]


def _loose_modes(root: Path) -> list[tuple[str, str]]:
    """Paths under `root` (and itself) another local user could open."""
    paths = [root, *sorted(root.rglob("*"))]
    want = {True: 0o700, False: 0o600}
    return [
        (str(p), oct(stat.S_IMODE(p.lstat().st_mode)))
        for p in paths
        if stat.S_IMODE(p.lstat().st_mode) != want[p.is_dir()]
    ]


def test_no_log_or_file_on_disk_carries_a_secret(run: dict[str, Any]) -> None:
    """The DuckDB file included: it holds provider keys only encrypted."""
    for root in (run["root"], run["prefect_root"]):
        assert _secret_leaks(Path(root), _forbidden(run)) == []
    assert "vault" in _stored_provider_keys(run["root"] / "data" / DB_NAME)
    logs = {p.name for p in (run["root"] / "logs").iterdir()}
    assert any("gateway" in n for n in logs) and any("runner" in n for n in logs), logs


def test_every_path_in_the_data_directory_is_owner_only(run: dict[str, Any]) -> None:
    data = run["root"] / "data"
    assert _loose_modes(data) == []
    assert {p.name for p in data.iterdir()} >= {DB_NAME, "blobs", "secret_key"}
    assert len(list((data / "blobs").iterdir())) >= 4  # inputs, parts, outputs, errors


def test_rotation_keeps_the_provider_working_and_retires_the_old_key(
    run: dict[str, Any],
) -> None:
    refused = run["refused"]
    assert refused.returncode == 2 and "is the gateway still running?" in refused.stderr
    assert run["rotation"].returncode == 0, run["rotation"].stderr
    assert "re-encrypted 5 provider keys" in run["rotation"].stdout  # 2 from the stack
    # The mock refuses any other Authorization header: these went out with the right key.
    assert run["after_rotation"]["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    before = run["before_rotation"]
    stored = _stored_provider_keys(run["root"] / "data" / DB_NAME)
    old = Fernet(before["key"].encode())
    for name, value in stored.items():
        assert value.startswith("fernet:") and value != before[name]
        with pytest.raises(InvalidToken):
            old.decrypt(value.removeprefix("fernet:").encode())
    assert (run["root"] / "data" / "secret_key").read_text() != before["key"]


def test_api_keys_are_stored_as_hashes(run: dict[str, Any]) -> None:
    with duckdb.connect(str(run["root"] / "data" / DB_NAME), read_only=True) as con:
        hashes = {row[0] for row in con.execute("SELECT key_hash FROM api_keys").fetchall()}
    assert hash_key(run["api_key"]) in hashes
    assert run["api_key"] not in hashes


def _older_install(data: Path, mock_url: str) -> None:
    """A data directory as an older batchgate left it under umask 022: 0755 /
    0644 paths and a provider key stored in clear."""
    data.mkdir(mode=0o755)
    MetadataStore(data / DB_NAME).close()
    with duckdb.connect(str(data / DB_NAME)) as con:
        con.execute(
            "INSERT INTO providers (name, base_url, api_key, is_active, max_concurrency, "
            "is_default, created_at) VALUES ('legacy', ?, ?, TRUE, 8, TRUE, 1)",
            [f"{mock_url}/v1", LEGACY_KEY],
        )
    (data / "logs").mkdir(mode=0o755)
    (data / "logs" / "gateway.log").write_text("an older start\n")
    assert LEGACY_KEY.encode() in (data / DB_NAME).read_bytes()


def test_up_over_an_older_install_leaves_nothing_open_or_in_clear(up_dir: Path) -> None:
    """`batchgate up` started with umask 022 over an older install: after a
    batch, every path (DuckDB, blobs, logs, Prefect's SQLite database, the
    generated secrets) is 0600/0700 and no file holds the provider key, the
    API key, the admin key or the internal token in clear - except the two
    files that are those secrets' own stores (admin_key, internal_token),
    each checked for the others."""
    data = up_dir / "data"
    port, prefect_port, mock_port = free_port(), free_port(), free_port()
    with _umask(0o022):
        mock = start_child(
            "mock",
            [
                sys.executable,
                "-m",
                "batchgate.cli",
                "mock-upstream",
                "--port",
                str(mock_port),
                "--api-key",
                LEGACY_KEY,
            ],  # fmt: skip
            clean_env(up_dir / "unused", port, prefect_port),
            up_dir / "mock-logs",
        )
        _older_install(data, f"http://127.0.0.1:{mock_port}")
        up = subprocess.Popen(
            [sys.executable, "-m", "batchgate.cli", "up"],
            cwd=ROOT,
            env=clean_env(data, port, prefect_port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    output = Output(up)
    try:
        wait_ready(up, output, f"http://127.0.0.1:{port}")
        match = re.search(r"API key:\s+(\S+)", output.text)
        assert match, output.text
        api_key = match.group(1)
        admin = {"Authorization": f"Bearer {(data / 'admin_key').read_text()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            added = http.post(
                "/admin/providers",
                json={"name": "fresh", "base_url": "http://127.0.0.1:9/v1", "api_key": FRESH_KEY},
                headers=admin,
            )
            assert added.status_code == 201, added.text
            user = {"Authorization": f"Bearer {api_key}"}
            batch = _run_batch(http, user, _chat_lines({"legacy": 5}))
        assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}, batch
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, output.text
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
        stop_child(mock)

    secrets_by_file = {
        "admin_key": (data / "admin_key").read_text(),
        "internal_token": (data / "internal_token").read_text(),
    }
    forbidden = {
        "legacy provider key": LEGACY_KEY,
        "fresh provider key": FRESH_KEY,
        "api key": api_key,
        **{name.replace("_", " "): value for name, value in secrets_by_file.items()},
    }
    assert (data / "prefect").is_dir() and (data / "logs" / "runner.log").is_file()
    assert _loose_modes(data) == []
    leaks = _secret_leaks(data, forbidden)
    # A secret's own store holds it, by design; nothing else may.
    own = {(data / name, name.replace("_", " ")) for name in secrets_by_file}
    assert [(p, name) for p, found in leaks for name in found if (p, name) not in own] == []
