"""`batchgate doctor`: a clean data directory passes, and each kind of damage a
crash can leave (orphans, missing blobs, temp files, stale parts, counts that
disagree with chunks or files) is reported. With the file held by another
process (a running gateway), doctor and every other command that opens it
refuse in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batchgate.cli import main
from batchgate.ops.doctor import examine
from harness.records import store_batch
from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from storage.records import BatchRecord
from tasks.ledger import BatchLedger, part_name
from tasks.result_lines import result_line

ROOT = Path(__file__).resolve().parents[2]

CHAT = "/v1/chat/completions"


class Data:
    """A data directory with batches driven through the ledger, no upstream."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = MetadataStore(root / "batchgate.duckdb")
        self.blobs = BlobStore(root / "blobs")
        self.ledger = BatchLedger(self.store, self.blobs, lease_seconds=30)
        self.key, _ = self.store.create_api_key("doctor")

    def batch(self, lines: int, chunk: int = 2, *, run: int | None = None) -> str:
        """A batch planned in chunks of `chunk` lines; the first `run` chunks
        recorded (all when None), and finalized when all ran."""
        data = b"".join(
            orjson.dumps(
                {"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {"model": "m"}}
            )
            + b"\n"
            for i in range(lines)
        )
        batch_id = store_batch(self.store, self.blobs, self.key.id, data, CHAT)
        token = self.ledger.claim(batch_id, None)["lease_token"]
        offsets = [0]
        for line in data.splitlines(keepends=True):
            offsets.append(offsets[-1] + len(line))
        spans = [
            {
                "index": n,
                "start_offset": offsets[start],
                "end_offset": offsets[min(start + chunk, lines)],
                "first_line": start + 1,
                "line_count": min(chunk, lines - start),
            }
            for n, start in enumerate(range(0, lines, chunk))
        ]
        self.ledger.save_plan(batch_id, token, total=lines, chunks=spans, errors=[], models=["m"])
        for span in spans[: len(spans) if run is None else run]:
            first = span["first_line"] - 1
            ids = [f"r{i}" for i in range(first, first + span["line_count"])]
            ok = b"".join(result_line(c, {"status_code": 200, "body": {}}) for c in ids[:-1])
            bad = result_line(ids[-1], {"status_code": 500, "body": {"error": {}}})
            self.ledger.record_chunk(
                batch_id,
                token,
                span["index"],
                output=ok,
                errors=bad,
                completed=len(ids) - 1,
                failed=1,
                usage=None,
                model="m",
            )
        if run is None:
            self.ledger.finalize(batch_id, token, "completed")
        return batch_id

    def get(self, batch_id: str) -> BatchRecord:
        batch = self.store.get_batch(batch_id)
        assert batch is not None
        return batch


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Data]:
    d = Data(tmp_path)
    yield d
    d.store.close()


def kinds(data: Data) -> dict[str, int]:
    return dict(examine(data.store, data.blobs).kinds())


def test_clean_directory_has_no_problems(data: Data) -> None:
    done = data.batch(7)
    data.batch(6, run=1)  # live, mid-run: its parts are owned, not orphans
    report = examine(data.store, data.blobs)
    assert report.ok, report.render()
    assert report.batches == 2 and "no problems" in report.render()
    assert data.get(done).status == "completed"


def test_orphan_missing_and_temp_blobs_are_reported(data: Data) -> None:
    batch = data.get(data.batch(4))
    data.blobs.write_bytes("file-nobodyowns", b"x")
    assert batch.output_file_id
    data.blobs.delete(batch.output_file_id)
    (data.blobs.root / ".file-half.1234.tmp").write_bytes(b"partial")
    report = examine(data.store, data.blobs)
    found = {(p.kind, p.subject) for p in report.problems}
    assert ("orphan_blob", "file-nobodyowns") in found
    assert ("missing_blob", batch.output_file_id) in found
    assert ("temp_file", ".file-half.1234.tmp") in found


def test_deleted_file_whose_bytes_stayed_is_an_orphan(data: Data) -> None:
    batch = data.get(data.batch(4))
    assert batch.input_file_id
    data.store.mark_file_deleted(batch.input_file_id)
    assert kinds(data) == {"orphan_blob": 1}


def test_parts_left_by_an_ended_batch_and_missing_parts_of_a_live_one(data: Data) -> None:
    ended = data.batch(4)
    data.blobs.write_bytes(part_name(ended, 0, "out"), b"")
    live = data.batch(6, run=2)
    data.blobs.delete(part_name(live, 1, "err"))
    data.blobs.write_bytes(part_name("batch_gone", 3, "err"), b"")
    report = examine(data.store, data.blobs)
    found = {(p.kind, p.subject) for p in report.problems}
    assert found == {
        ("stale_part", part_name(ended, 0, "out")),
        ("missing_part", part_name(live, 1, "err")),
        ("stale_part", part_name("batch_gone", 3, "err")),
    }


def test_counts_that_disagree_with_chunks_or_files(data: Data) -> None:
    batch = data.get(data.batch(6))
    data.store.update_batch(batch.id, completed=batch.completed + 1)
    problems = examine(data.store, data.blobs).problems
    assert {p.kind for p in problems} == {"counts", "file_lines"}
    assert any("chunks say 3/3" in p.detail for p in problems)
    assert any("has 3 lines, request_counts say 4" in p.detail for p in problems)


def test_a_custom_id_twice_across_output_and_error_is_reported(data: Data) -> None:
    batch = data.get(data.batch(2, chunk=2))
    assert batch.output_file_id and batch.error_file_id
    path = data.blobs.path(batch.error_file_id)
    path.write_bytes(path.read_bytes().replace(b'"r1"', b'"r0"'))
    (problem,) = examine(data.store, data.blobs).problems
    assert problem.kind == "file_lines" and "r0" in problem.detail


def test_cli_exit_codes_and_a_locked_database(
    data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data.batch(4)
    data.store.close()
    monkeypatch.setenv("BATCHGATE_DATA_DIR", str(tmp_path))
    assert main(["doctor"]) == 0
    assert "no problems" in capsys.readouterr().out

    (tmp_path / "blobs" / "file-stray").write_bytes(b"x")
    assert main(["doctor"]) == 1
    assert "orphan_blob" in capsys.readouterr().out

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; db = duckdb.connect(sys.argv[1]); print('ok', flush=True); "
            "time.sleep(60)",
            str(tmp_path / "batchgate.duckdb"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ok"
        # Every command that opens the file says so in one line, exit 2.
        monkeypatch.setenv("MALLOC_ARENA_MAX", "8")  # `serve` leaves this process's malloc be
        for command in (["doctor"], ["create-key", "x"], ["rotate-secret-key"], ["serve"]):
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert err.startswith(f"batchgate {command[0]}: cannot open "), err
            assert f"(PID {holder.pid}) holds it - is the gateway still running?" in err
            assert err.count("\n") == 1, err
        assert not (tmp_path / "secret_key.next").exists()  # the rotation changed nothing
        # As the operator runs it: the same line, no traceback.
        created = subprocess.run(
            [sys.executable, "-m", "batchgate.cli", "create-key", "x"],
            cwd=ROOT,
            env={**os.environ, "BATCHGATE_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 2, created
        assert created.stderr.startswith("batchgate create-key: cannot open "), created.stderr
        assert "Traceback" not in created.stderr and created.stdout == ""
    finally:
        holder.kill()
        holder.wait()
    data.store = MetadataStore(tmp_path / "batchgate.duckdb")  # for the fixture's close
    assert "x" not in {k.name for k in data.store.list_api_keys()}  # none created meanwhile


def test_cli_without_a_database_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("BATCHGATE_DATA_DIR", str(tmp_path / "nothing"))
    assert main(["doctor"]) == 2
    assert "no database" in capsys.readouterr().err


def test_cli_on_a_damaged_database_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("BATCHGATE_DATA_DIR", str(tmp_path))
    (tmp_path / "batchgate.duckdb").write_bytes(b"not a database" * 1000)
    assert main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("batchgate doctor: cannot open") and "Traceback" not in err
