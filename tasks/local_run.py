"""`batchgate run`: one JSONL file through the batch engine, in this process.

No gateway and no Prefect: the same `drive_batch` the flow runs, with the
plain steps, over the in-process worker API on a local state directory
(DuckDB + blobs, the same storage layer). Validation, routing, the upstream
client with its retries and AIMD windows, chunk checkpoints and finalize are
the gateway's own code.

Resume. The state of a run lives in `<state root>/<key>/`, where the key
is the hash of the input file's bytes and the endpoint, so the same command
run again finds its batch, skips the chunks already checkpointed and sends
only the rest. One process at a time holds a directory (a file lock); a
run killed outright (SIGKILL) left a lease behind, which the next run of
the same key takes over at once. Within the chunks in flight, every line
is journaled as it finishes (tasks/line_journal.py), so a resumed run
sends again only what was in flight when the run died: at most the
providers' windows, never more than one chunk (`run_chunk_size`).

Stopping. Ctrl-C is the stop reason "interrupted" (`RunControl`, the
machinery a cancel uses): no line is sent after it, requests in flight get
`STOP_GRACE_SECONDS` to finish, after which they are cut; chunks finished
before it stay checkpointed, the chunks in flight are not recorded, and on
resume they send only their lines that had not finished. A second Ctrl-C
exits at once (the checkpoints are safe: each is written atomically).

The output and error files are written only when the run completes, each
atomically (a temporary file renamed into place), and both are always
written (either may be empty): after an interrupted run neither exists or
a previous complete one is left as it was, never a partial file. After
completion the state directory of that key is removed; the output files
are the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import gc
import hashlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop

from storage.blobs import BlobStore
from storage.metadata import MetadataStore, now
from storage.records import BatchEndpoint, BatchRecord, FileRecord, ProviderRecord
from tasks.batch_rules import ENDPOINT_NAMED
from tasks.drive import Steps, drive_batch, run_chunk, validate_input
from tasks.ledger import BatchLedger
from tasks.line_journal import Journals
from tasks.run_meter import Meter, MeteredClient
from tasks.run_providers import RunError
from tasks.settings import Settings
from tasks.worker_api import LocalWorkerAPI
from tasks.worker_messages import Control, PlanAnswer

DEFAULT_ENDPOINT: BatchEndpoint = "/v1/chat/completions"
STATE_DIR_NAME = ".batchgate-run"
# Lines per checkpoint. The journal, not the chunk, bounds what a kill loses,
# so chunks need not be small: a checkpoint (parts, fsyncs, DuckDB rows) costs
# about 32 ms of CPU whatever its size up to 2,000 lines, 65 us a line at 500.
# 1,000 (the gateway's default): 2,000 saved 16 us a line more but held 5 MB
# more in the two chunks in flight, past the 150 MB target at 200,000 lines
# (153 MB against 148 MB; docs/benchmarks.md).
RUN_CHUNK_SIZE = 1000
STOP_GRACE_SECONDS = 1.5
# The collector's thresholds while a run executes. At the default (700, 10,
# 10) a 20,000-line run at 0 ms latency made ~1,200 collections, 0.8-1.1 s
# of CPU (~45 us a line, measured with gc.callbacks): each request leaves
# a few dozen containers alive for a moment (parsed lines and answers,
# the HTTP client's per-request objects). Almost none are cycles, so refcounting
# frees them; a collection every 100,000 allocations finds the rare cycle
# and costs ~0.03 s a run.
RUN_GC_THRESHOLDS = (100_000, 20, 20)
LOCAL_OWNER = "local-run"

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


# -- options ------------------------------------------------------


@dataclass
class RunOptions:
    input_path: Path
    output_path: Path
    errors_path: Path
    state_root: Path
    endpoint: BatchEndpoint
    providers: list[ProviderRecord]
    max_lines: int | None = None
    chunk_size: int = RUN_CHUNK_SIZE
    parquet_path: Path | None = None


def default_output_path(input_path: Path) -> Path:
    return input_path.with_name(input_path.name.removesuffix(".jsonl") + ".results.jsonl")


def default_errors_path(output_path: Path) -> Path:
    """`x.results.jsonl` -> `x.errors.jsonl`; `out.jsonl` -> `out.errors.jsonl`."""
    stem = output_path.name.removesuffix(".jsonl").removesuffix(".results")
    return output_path.with_name(stem + ".errors.jsonl")


def infer_endpoint(input_path: Path) -> BatchEndpoint:
    """The `url` of the file's first line, if it names a batch endpoint; else chat.
    Validation then holds every line to it."""
    with open(input_path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    url = orjson.loads(raw).get("url")
                except (orjson.JSONDecodeError, AttributeError):
                    return DEFAULT_ENDPOINT
                return (
                    ENDPOINT_NAMED.get(url, DEFAULT_ENDPOINT)
                    if isinstance(url, str)
                    else DEFAULT_ENDPOINT
                )
    return DEFAULT_ENDPOINT


def run_chunk_size(providers: Sequence[ProviderRecord]) -> int:
    """The default lines per chunk: `RUN_CHUNK_SIZE`, or more when the
    providers may have more requests in flight, so that what a kill loses
    (the requests in flight) is never more than one chunk."""
    return max(RUN_CHUNK_SIZE, sum(p.max_concurrency for p in providers))


def run_settings(options: RunOptions, **overrides: Any) -> Settings:
    """The engine's settings for a run: `BATCHGATE_*` and the config file for
    the upstream knobs, the run's own chunking and no line cap unless asked."""
    from tasks.settings import load_settings

    return load_settings(
        chunk_size=options.chunk_size,
        max_batch_lines=options.max_lines or 2**62,
        **overrides,
    )


# -- results table (issue 12) ---------------------------------------------------


def write_results_table(blobs: BlobStore, batch: BatchRecord, parquet_path: Path) -> int:
    """The results table of a completed run (tasks/results_table.py, the one
    the gateway serves), built from the run's own files in its state
    directory: per-line meta, output and error. Returns its rows."""
    from tasks.ledger import derived_blob_name
    from tasks.results_table import build_table

    def present(name: str | None) -> Path | None:
        return blobs.path(name) if name and blobs.exists(name) else None

    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    return build_table(
        present(derived_blob_name(batch.id, "meta")),
        present(batch.output_file_id),
        present(batch.error_file_id),
        parquet_path,
    )


# -- the state directory ----------------------------------------------------------


def run_key(input_path: Path, endpoint: str) -> str:
    """What makes two runs the same run: the input's bytes and the endpoint."""
    digest = hashlib.sha256()
    with open(input_path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    digest.update(b"\0" + endpoint.encode())
    return digest.hexdigest()[:24]


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunError(f"another `batchgate run` is working on {directory}") from exc
        yield


class RunWorkerAPI(LocalWorkerAPI):
    """The in-process worker API of a run: providers from the command line (no
    key is ever stored), and no checkpoint for a chunk that was interrupted."""

    def __init__(
        self,
        ledger: BatchLedger,
        store: MetadataStore,
        providers: Sequence[ProviderRecord],
        interrupted: Callable[[], bool],
        on_chunk: Callable[[int, int], None],
        journals: Journals | None = None,
    ) -> None:
        super().__init__(ledger, store)
        self._providers = list(providers)
        self._interrupted = interrupted
        self._on_chunk = on_chunk
        self._journals = journals

    def providers(self) -> list[ProviderRecord]:
        return self._providers

    def record_chunk(self, batch_id: str, token: str, index: int, **result: Any) -> Control:
        if self._interrupted():  # some of its lines were stopped: the chunk runs again
            return self.ledger.control(self.ledger.batch(batch_id))
        control = self.ledger.record_chunk(batch_id, token, index, **result)
        if self._journals is not None:  # checkpointed: its lines live in the parts now
            self._journals.discard(index)
        self._on_chunk(result["completed"], result["failed"])
        return control


@dataclass
class Progress:
    """What the display reads: whole-file counts from the checkpoints, and
    the live meter of the lines this process sends."""

    meter: Meter = field(default_factory=Meter)
    total: int | None = None
    done_before: int = 0  # lines checkpointed by earlier runs
    recorded: int = 0  # lines checkpointed, all runs
    recorded_failed: int = 0
    failed_before: int = 0
    client: MeteredClient | None = None
    stopping: bool = False

    @property
    def done(self) -> int:
        return max(self.done_before + self.meter.finished, self.recorded)

    @property
    def failed(self) -> int:
        return max(self.failed_before + self.meter.failed, self.recorded_failed)

    def windows(self) -> dict[str, tuple[int, int, int]]:
        return self.client.windows() if self.client is not None else {}


@dataclass
class RunOutcome:
    exit_code: int
    status: str
    batch: BatchRecord | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


class LocalRun:
    def __init__(self, options: RunOptions, settings: Settings) -> None:
        self.options = options
        self.settings = settings
        self.progress = Progress()
        self.interrupted = False
        self.batch_id = ""
        self._main: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- signals ----------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        """First Ctrl-C: stop sending, give in-flight requests a grace, then cut
        them. Second: leave at once (checkpoints are atomic)."""
        if self.interrupted:
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        self.progress.stopping = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._arm_cut)

    def _arm_cut(self) -> None:
        assert self._loop is not None
        self._loop.call_later(STOP_GRACE_SECONDS, self._cut)

    def _cut(self) -> None:
        if self._main is not None and not self._main.done():
            self._main.cancel()

    def stop_reason(self) -> str | None:
        return "interrupted" if self.interrupted else None

    # -- the run ----------------------------------------------------------------

    def execute(self, display: Callable[[Progress], Any] | None = None) -> RunOutcome:
        options = self.options
        key = run_key(options.input_path, options.endpoint)
        directory = options.state_root / key
        self.batch_id = f"batch_run_{key}"
        with locked(directory):
            store = MetadataStore(directory / "batchgate.duckdb")
            try:
                blobs = BlobStore(directory / "blobs")
                blobs.remove_debris()
                ledger = BatchLedger(store, blobs, lease_seconds=self.settings.lease_seconds)
                self._prepare(store, blobs, ledger)
                journals = Journals(directory / "journal")
                api = RunWorkerAPI(
                    ledger,
                    store,
                    options.providers,
                    lambda: self.interrupted,
                    self._chunk_recorded,
                    journals,
                )
                status = self._drive(api, display, journals)
                batch = store.get_batch(self.batch_id)
                assert batch is not None
                outcome = self._outcome(status, batch, blobs)
            finally:
                store.close()
        if outcome.status != "interrupted":  # ended: nothing left to resume
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                options.state_root.rmdir()  # only if no other run's state is left
        return outcome

    def _prepare(self, store: MetadataStore, blobs: BlobStore, ledger: BatchLedger) -> None:
        """Register the input and the batch on the first run; on a later one,
        take over the lease a killed run left and count what is done."""
        batch = store.get_batch(self.batch_id)
        if batch is None:
            file_id = f"file-run-{self.batch_id.removeprefix('batch_run_')}"
            with blobs.writer(file_id) as out, open(self.options.input_path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            store.insert_file(
                FileRecord(
                    id=file_id,
                    api_key_id=LOCAL_OWNER,
                    filename=self.options.input_path.name,
                    purpose="batch",
                    bytes=blobs.size(file_id),
                    created_at=now(),
                    expires_at=None,
                    deleted_at=None,
                    blob_name=file_id,
                )
            )
            store.insert_batch(
                BatchRecord(
                    id=self.batch_id,
                    api_key_id=LOCAL_OWNER,
                    endpoint=self.options.endpoint,
                    input_file_id=file_id,
                    completion_window="24h",
                    status="validating",
                    created_at=now(),
                    expires_at=None,
                )
            )
            return
        # This process holds the directory's lock: any lease is a dead run's.
        store.update_batch(self.batch_id, lease_token=None, lease_expires_at=None)
        chunks = ledger.chunks(self.batch_id)
        if chunks:
            self.progress.total = sum(c.line_count for c in chunks)
            done = [c for c in chunks if c.done]
            self.progress.done_before = self.progress.recorded = sum(
                c.completed + c.failed for c in done
            )
            self.progress.failed_before = self.progress.recorded_failed = sum(
                c.failed for c in done
            )

    def _chunk_recorded(self, completed: int, failed: int) -> None:
        self.progress.recorded += completed + failed
        self.progress.recorded_failed += failed

    def _steps(self, journals: Journals) -> Steps:
        def validate(*args: Any) -> PlanAnswer:
            plan = validate_input(*args)
            if plan.get("status") != "failed":
                self.progress.total = plan.get("total")
            return plan

        return Steps(validate=validate, execute=functools.partial(run_chunk, journals=journals))

    def _drive(
        self,
        api: RunWorkerAPI,
        display: Callable[[Progress], Any] | None,
        journals: Journals,
    ) -> str:
        settings = self.settings

        async def main() -> str:
            self.progress.client = client = MeteredClient.for_run(self.progress.meter, settings)
            async with client:
                return await drive_batch(
                    api,
                    client,
                    self.batch_id,
                    settings=settings,
                    steps=self._steps(journals),
                    stop=self.stop_reason,
                )

        async def supervised() -> str:
            self._loop = asyncio.get_running_loop()
            self._main = asyncio.current_task()
            shown = asyncio.create_task(display(self.progress)) if display else None
            try:
                return await main()
            except asyncio.CancelledError:
                if not self.interrupted:
                    raise
                return "interrupted"
            finally:
                if shown is not None:
                    shown.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await shown

        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        # uvloop, as the flow runs have (flows/forkserver.py): the standard loop
        # spent the CPU a loaded machine did not have on its own plumbing.
        # Objects alive after start-up (the imports) are frozen out of the
        # collector's full passes, as in the forkserver.
        gc.collect()
        gc.freeze()
        previous_gc = gc.get_threshold()
        gc.set_threshold(*RUN_GC_THRESHOLDS)
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(supervised())
        finally:
            gc.set_threshold(*previous_gc)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _outcome(self, status: str, batch: BatchRecord, blobs: BlobStore) -> RunOutcome:
        if batch.status == "failed":
            errors = batch.errors or []
            if batch.total == 0 and any(e.get("line") is not None for e in errors):
                return RunOutcome(EXIT_INVALID, "invalid", batch, errors)
            return RunOutcome(EXIT_SOME_FAILED, "failed", batch, errors, "the run failed")
        if batch.status != "completed":  # stopped: the next run takes over its lease
            return RunOutcome(
                EXIT_INTERRUPTED,
                "interrupted",
                batch,
                message=(
                    f"interrupted: {self.progress.recorded:,} of {batch.total:,} lines are "
                    "checkpointed; run the same command again to resume"
                ),
            )
        options = self.options
        publish(blobs, batch.output_file_id, options.output_path)
        publish(blobs, batch.error_file_id, options.errors_path)
        if options.parquet_path is not None:
            write_results_table(blobs, batch, options.parquet_path)
        code = EXIT_SOME_FAILED if batch.failed else EXIT_OK
        return RunOutcome(code, "completed", batch)


def publish(blobs: BlobStore, file_id: str | None, destination: Path) -> None:
    """Copy a finalized file out of the state directory, atomically; no file id
    (no lines of that kind) gives an empty file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            if file_id is not None:
                with blobs.open(file_id) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
