"""The gateway side of a batch run: leases, plan, chunk checkpoints, finalize.

Only the process that owns DuckDB and the blob directory (the gateway)
builds a `BatchLedger`. Flow runs reach it through the internal HTTP API
(`gateway/routes/internal.py`) or, in unit tests, the in-process twin in
`tasks/worker_api.py`. Every write carries the run's lease token, so a run
that lost its lease (the reconciler gave the batch to a new run) cannot
write over the new one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from storage.blobs import BlobStore
from storage.jsonl import iter_chunk_lines
from storage.records import BatchRecord, BatchStatus, ChunkRecord, FileRecord
from tasks import status as st
from tasks.budgets import per_model
from tasks.control_state import control_state, record_spend
from tasks.crashpoints import crash_point
from tasks.result_lines import result_line
from tasks.usage import sum_usage
from tasks.worker_messages import (
    ChunkClaimAnswer,
    ChunkView,
    ClaimAnswer,
    ClaimsAnswer,
    Control,
)

if TYPE_CHECKING:  # flow processes import this module for its errors: no DuckDB there
    from storage.metadata import MetadataStore

log = logging.getLogger("batchgate.ledger")


class ChunkHook(Protocol):
    """Hears an accepted checkpoint (`BatchLedger(on_chunk=)`): its lines,
    the posting run's metrics report, the batch and that run's id."""

    def __call__(
        self,
        completed: int,
        failed: int,
        metrics: dict[str, Any] | None,
        /,
        *,
        batch_id: str,
        run: str | None,
    ) -> None: ...


def now() -> int:
    """The metadata clock (`storage.metadata.now`), here so that importing the
    ledger's errors does not import DuckDB."""
    return int(time.time())


BUDGET_MESSAGE = "The API key's budget was reached before this request was sent."
INTERRUPTED_FINALIZE = "Batch was interrupted during finalization and could not be finalized again"
# A batch whose finalize failed has no output or error file: its finished
# lines are only in the checkpoint parts, which are kept so that
# `GET /v1/batches/{id}/results` still serves them; retention removes them
# after the batch's output expiry (else KEPT_PARTS_SECONDS) from its failure.
FINALIZATION_FAILED = "finalization_failed"
KEPT_PARTS_SECONDS = 30 * 24 * 3600


def keeps_parts(batch: BatchRecord) -> bool:
    """Whether the batch's checkpoint parts are the only copy of its lines."""
    return any(e.get("code") == FINALIZATION_FAILED for e in batch.errors or [])


def remove_parts(store: MetadataStore, blobs: BlobStore, batch_id: str) -> None:
    for chunk in store.get_chunks(batch_id):
        for kind in ("out", "err", "meta"):
            blobs.delete(part_name(batch_id, chunk.chunk_index, kind))


class LedgerError(Exception):
    """Base for refusals the internal API turns into 4xx answers."""

    status = 400


class BatchNotFound(LedgerError):
    status = 404


class LeaseLost(LedgerError):
    status = 409


class InputUnavailable(LedgerError):
    status = 410


@dataclass(frozen=True)
class Outcome:
    """How a run ends: which status, and the error code for lines that never ran."""

    target: BatchStatus
    unrun_code: str | None
    unrun_message: str | None
    # An entry for the batch's `errors`, for outcomes that fail the batch.
    error: dict[str, Any] | None = None


OUTCOMES = {
    "completed": Outcome("completed", None, None),
    "cancelled": Outcome(
        "cancelled", "batch_cancelled", "The batch was cancelled before this request was sent."
    ),
    "expired": Outcome(
        "expired", "batch_expired", "The batch expired before this request was sent."
    ),
    "budget_exceeded": Outcome(
        "failed",
        "budget_exceeded",
        BUDGET_MESSAGE,
        {"code": "budget_exceeded", "message": BUDGET_MESSAGE, "param": None, "line": None},
    ),
}


def derived_file_id(batch_id: str, kind: str) -> str:
    """Output/error file ids derived from the batch id, so finalize is idempotent."""
    digest = hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]
    return f"file-{digest}"


def part_name(batch_id: str, index: int, kind: str) -> str:
    return f"{batch_id}.c{index:06d}.{kind}"


# Blobs derived from a batch's results (issue 12), beside its output file:
# "meta" (per-line provider, latency and attempts, in input order, written
# at finalize), "parquet" and "csv" (the results table), "summary" (JSON).
DERIVED_SUFFIXES = {
    "meta": "meta.jsonl",
    "parquet": "results.parquet",
    "csv": "results.csv",
    "summary": "summary.json",
}


def derived_blob_name(batch_id: str, kind: str) -> str:
    return f"{batch_id}.{DERIVED_SUFFIXES[kind]}"


def meta_lines(meta: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(m) + b"\n" for m in meta)


def chunk_view(chunk: ChunkRecord) -> ChunkView:
    """A chunk as runs see it: everything but the token of whoever holds it
    (a claim token is the right to post that chunk's checkpoint)."""
    return {
        "batch_id": chunk.batch_id,
        "chunk_index": chunk.chunk_index,
        "start_offset": chunk.start_offset,
        "end_offset": chunk.end_offset,
        "first_line": chunk.first_line,
        "line_count": chunk.line_count,
        "done": chunk.done,
        "completed": chunk.completed,
        "failed": chunk.failed,
        "usage": chunk.usage,
        "model": chunk.model,
        "done_by": chunk.done_by,
        "stopped": chunk.stopped,
        "claim_expires_at": chunk.claim_expires_at,
        "claimed_by": chunk.claimed_by,
    }


# Checkpoints of one batch and its finalize are serialized (a chunk's parts
# must come from one post, and a helper's post must not land inside a
# finalize); batches share these locks by hash, so a gateway holds a fixed few.
_BATCH_LOCKS = [threading.RLock() for _ in range(64)]


def batch_lock(batch_id: str) -> threading.RLock:
    return _BATCH_LOCKS[hash(batch_id) % len(_BATCH_LOCKS)]


class BatchLedger:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        *,
        lease_seconds: int,
        prices: Sequence[Any] = (),
        on_chunk: ChunkHook | None = None,
        fanout_runs: int = 1,
    ) -> None:
        """`on_chunk(completed, failed, metrics, batch_id=, run=)` hears each
        accepted checkpoint once, with the flow run that posted it (the
        gateway's metrics); a repeated post is not heard.
        Finalize tells it too, once, of the lines that never ran (as failed,
        with no metrics), so its line counts add up to `request_counts`.
        `fanout_runs`: how many flow runs may work one batch (its own run and
        helpers, `BATCHGATE_FANOUT_RUNS`); the batch's run learns it at claim."""
        self.store = store
        self.blobs = blobs
        self.lease_seconds = lease_seconds
        self.fanout_runs = max(1, fanout_runs)
        self.prices = list(prices)  # `[[prices]]` of the config: spend in dollars
        self.on_chunk = on_chunk

    # -- reading ----------------------------------------------------------

    def batch(self, batch_id: str) -> BatchRecord:
        batch = self.store.get_batch(batch_id)
        if batch is None:
            raise BatchNotFound(f"No such Batch object: {batch_id}")
        return batch

    def _leased(self, batch_id: str, token: str) -> BatchRecord:
        batch = self.batch(batch_id)
        if batch.lease_token != token:
            raise LeaseLost(f"lease on {batch_id} is held by another run")
        return batch

    def control(self, batch: BatchRecord) -> Control:
        """What a run needs to know between requests: status and deadline,
        and for a live batch its control state (`tasks/control_state.py`): paused,
        a stop reason (budget), each provider's concurrency ceiling."""
        answer: Control = {
            "status": batch.status,
            "expires_at": batch.expires_at,
            "endpoint": batch.endpoint,
            "total": batch.total,
            "lease_seconds": self.lease_seconds,
        }
        if not batch.is_terminal:
            live = control_state(self.store, batch.id, batch.api_key_id)
            answer["paused"] = live["paused"]
            answer["stop_reason"] = live["stop_reason"]
            answer["ceilings"] = live["ceilings"]
        return answer

    # -- leases -------------------------------------------------------------

    def claim(self, batch_id: str, flow_run_id: str | None) -> ClaimAnswer:
        """Take the batch for a run unless another live run holds it."""
        batch = self.batch(batch_id)
        if batch.is_terminal:
            return {**self.control(batch), "lease_token": None, "fanout_runs": self.fanout_runs}
        held = batch.lease_token is not None and (batch.lease_expires_at or 0) > time.time()
        if held:
            raise LeaseLost(f"{batch_id} is being processed by another run")
        token = secrets.token_hex(16)
        fields: dict[str, Any] = {
            "lease_token": token,
            "lease_expires_at": time.time() + self.lease_seconds,
        }
        if flow_run_id:
            fields["flow_run_id"] = flow_run_id
        if not self.store.transition_batch(batch_id, [batch.status], **fields):
            raise LeaseLost(f"{batch_id} changed while being claimed")
        return {
            **self.control(self.batch(batch_id)),
            "lease_token": token,
            "fanout_runs": self.fanout_runs,
        }

    def renew(self, batch_id: str, token: str, *, claims: bool = False) -> Control:
        """Extend the run's lease; for an ended batch just say so. With
        `claims`, the chunk claims the run took with its lease token too.

        Finalize clears the lease as it ends the batch, so a heartbeat that
        races the run's own finalize must not read as a lost lease: the
        ended status alone tells any run to stop."""
        batch = self.batch(batch_id)
        if batch.is_terminal:
            return self.control(batch)
        self._leased(batch_id, token)
        until = time.time() + self.lease_seconds
        self.store.update_batch(batch_id, lease_expires_at=until)
        if claims:
            self.store.renew_claims(batch_id, [token], until, time.time())
        return self.control(batch)

    # -- chunk claims (one batch on many hosts) ------------------------------

    def claim_chunk(
        self, batch_id: str, flow_run_id: str | None, lease_token: str | None = None
    ) -> ChunkClaimAnswer:
        """Hand the next free chunk to a run, with a claim that lapses after
        `lease_seconds` unless renewed (`renew_claims`, or `renew` for the
        batch's own run, which claims with its lease token).

        The answer: the batch's control, `chunk` (None when no chunk is free:
        all done, or the rest held by live claims), `chunk_token` (the token
        that posts that chunk's checkpoint), and `pending_chunks` /
        `pending_lines` not yet done, so a run knows whether to wait or stop."""
        batch = self.batch(batch_id)
        if lease_token is not None and not batch.is_terminal:  # ended: just say so
            batch = self._leased(batch_id, lease_token)
        found = self.store.get_chunks(batch_id)
        pending = [c for c in found if not c.done]
        answer: ChunkClaimAnswer = {
            **self.control(batch),
            "chunk": None,
            "chunk_token": None,
            "pending_chunks": len(pending),
            "pending_lines": sum(c.line_count for c in pending),
        }
        # A batch told to stop or pause hands out nothing: the run would
        # only hold the chunk (a chunk is claimed before it is looked at).
        expired = batch.expires_at is not None and time.time() >= batch.expires_at
        stopping = answer.get("stop_reason") or answer.get("paused") or expired
        if batch.status != "in_progress" or not pending or stopping:
            return answer
        token = lease_token or secrets.token_hex(16)
        at = time.time()
        chunk = self.store.claim_chunk(batch_id, token, flow_run_id, at + self.lease_seconds, at)
        if chunk is not None:
            answer["chunk"] = chunk_view(chunk)
            answer["chunk_token"] = token
        return answer

    def renew_claims(self, batch_id: str, tokens: Sequence[str]) -> ClaimsAnswer:
        """A helper run's heartbeat: extend its live claims and read the
        batch's control (the same answer the batch's run gets from `renew`).
        `held`: the chunks still held; a claim that lapsed is not revived.
        `claimed`: chunks not done under anyone's live claim."""
        batch = self.batch(batch_id)
        at = time.time()
        held = self.store.renew_claims(batch_id, list(tokens), at + self.lease_seconds, at)
        claimed = sum(
            1
            for c in self.store.get_chunks(batch_id)
            if not c.done and (c.claim_expires_at or 0) > at
        )
        return {**self.control(batch), "held": held, "claimed": claimed}

    def _poster(self, batch: BatchRecord, chunk: ChunkRecord, token: str) -> str | None:
        """Who may post this chunk's checkpoint: the batch's run (its lease
        token), or the run holding a live claim on the chunk while the batch
        runs. Returns the poster's flow run id; anyone else loses."""
        if batch.lease_token is not None and token == batch.lease_token:
            return batch.flow_run_id
        live_claim = (
            chunk.claim_token == token
            and (chunk.claim_expires_at or 0) > time.time()
            and not chunk.done
            and batch.status in {"in_progress", "cancelling"}
        )
        if not live_claim:
            raise LeaseLost(f"chunk {chunk.chunk_index} of {batch.id} is held by another run")
        return chunk.claimed_by

    def release(self, batch_id: str, token: str) -> None:
        batch = self.batch(batch_id)
        if batch.lease_token == token:
            self.store.update_batch(batch_id, lease_token=None, lease_expires_at=None)

    # -- input and plan ------------------------------------------------------

    def _input_file(self, batch: BatchRecord) -> FileRecord:
        record = self.store.get_file(batch.input_file_id, batch.api_key_id)
        if record is None or not self.blobs.exists(record.blob_name):
            raise InputUnavailable(f"Input file {batch.input_file_id} is no longer available.")
        return record

    def input_blocks(self, batch_id: str) -> Iterator[bytes]:
        return self.blobs.iter_bytes(self._input_file(self.batch(batch_id)).blob_name)

    def save_plan(
        self,
        batch_id: str,
        token: str,
        *,
        total: int,
        chunks: Sequence[dict[str, Any]],
        errors: Sequence[dict[str, Any]],
        models: Sequence[str],
    ) -> Control:
        """Record validation: a failed batch with its errors, or the chunk plan."""
        batch = self._leased(batch_id, token)
        planned_while_cancelling = batch.status == "cancelling" and not self.store.get_chunks(
            batch_id
        )
        if batch.status != "validating" and not planned_while_cancelling:
            return self.control(batch)
        at = now()
        if errors:
            self.store.transition_batch(
                batch_id,
                ["validating", "cancelling"],
                status="failed",
                errors=list(errors),
                total=0,
                **st.stamp("failed", at),
            )
        else:
            self.store.save_chunks(
                batch_id,
                [
                    ChunkRecord(
                        batch_id=batch_id,
                        chunk_index=c["index"],
                        start_offset=c["start_offset"],
                        end_offset=c["end_offset"],
                        first_line=c["first_line"],
                        line_count=c["line_count"],
                    )
                    for c in chunks
                ],
            )
            crash_point("ledger:plan_after_chunks")
            if planned_while_cancelling:  # keep cancelling; finalize ends it
                self.store.update_batch(batch_id, total=total)
                return self.control(self.batch(batch_id))
            self.store.transition_batch(
                batch_id,
                ["validating"],
                status="in_progress",
                total=total,
                model=models[0] if models else None,
                **st.stamp("in_progress", at),
            )
        return self.control(self.batch(batch_id))

    def chunks(self, batch_id: str) -> list[ChunkRecord]:
        return self.store.get_chunks(batch_id)

    def chunk_input(self, batch_id: str, index: int) -> bytes:
        batch = self.batch(batch_id)
        chunk = self._chunk(batch_id, index)
        return self.blobs.read_range(
            self._input_file(batch).blob_name, chunk.start_offset, chunk.end_offset
        )

    def _chunk(self, batch_id: str, index: int) -> ChunkRecord:
        for chunk in self.store.get_chunks(batch_id):
            if chunk.chunk_index == index:
                return chunk
        raise BatchNotFound(f"{batch_id} has no chunk {index}")

    # -- checkpoints --------------------------------------------------------

    def record_chunk(
        self,
        batch_id: str,
        token: str,
        index: int,
        *,
        output: bytes,
        errors: bytes,
        completed: int,
        failed: int,
        usage: dict[str, Any] | None,
        model: str | None,
        meta: Sequence[dict[str, Any]] | None = None,
        usage_rows: Sequence[dict[str, Any]] | None = None,
        metrics: dict[str, Any] | None = None,
        stopped: int = 0,
    ) -> Control:
        """Write a finished chunk's part files, then mark it done: the checkpoint.

        Both parts are always written (maybe empty) so a retried chunk replaces
        every trace of an earlier attempt. `meta` (per-line provider, latency,
        attempts) becomes a third part; `usage_rows` (usage per requested
        model and provider) and the chunk's stamp for the live-results cursor
        are stored after the done mark (issue 12). A chunk newly done adds its
        usage to its key's spend and to what estimates learn; the answer then
        says whether the budget stops it.

        `token` is the batch's lease token or a live claim on this chunk
        (`claim_chunk`); a claim that lapsed or a chunk done since is
        refused before anything is written, so nothing counts twice."""
        with batch_lock(batch_id):
            batch = self.batch(batch_id)
            chunk = self._chunk(batch_id, index)
            poster = self._poster(batch, chunk, token)
            if batch.is_terminal:
                return self.control(batch)
            self.blobs.write_bytes(part_name(batch_id, index, "out"), output)
            self.blobs.write_bytes(part_name(batch_id, index, "err"), errors)
            if meta is not None:
                self.blobs.write_bytes(part_name(batch_id, index, "meta"), meta_lines(meta))
            crash_point("ledger:chunk_after_parts")
            # One commit for the done mark, its stamp, usage, spend and the
            # lease: each commit waits for DuckDB's log to reach the disk, and
            # five of them made most of a checkpoint's time (docs/scale-out.md).
            with self.store.transaction(writes=["batch_chunks", "batches"]):
                newly_done = self.store.complete_chunk(
                    batch_id,
                    index,
                    completed=completed,
                    failed=failed,
                    usage=usage,
                    model=model,
                    done_by=poster,
                    stopped=stopped,
                )
                self.store.add_result_chunk(batch_id, index, usage_rows or ())
                if newly_done and usage_rows:
                    record_spend(self.store, batch.api_key_id, per_model(usage_rows), self.prices)
                # A helper's post does not keep the batch's run alive.
                if token == batch.lease_token:
                    self.store.update_batch(
                        batch_id, lease_expires_at=time.time() + self.lease_seconds
                    )
            if newly_done and self.on_chunk is not None:
                self.on_chunk(completed, failed, metrics, batch_id=batch_id, run=poster)
            crash_point("ledger:chunk_after_commit")
            return self.control(self.batch(batch_id))

    # -- ending -------------------------------------------------------------

    def fail(
        self, batch_id: str, token: str | None, errors: Sequence[dict[str, Any]]
    ) -> BatchRecord:
        batch = self.batch(batch_id) if token is None else self._leased(batch_id, token)
        if not batch.is_terminal:
            self.store.transition_batch(
                batch_id,
                st.sources_of("failed"),
                status="failed",
                errors=list(errors),
                **st.stamp("failed", now()),
            )
            ended = self.batch(batch_id)
            if not keeps_parts(ended):
                self._remove_parts(batch_id)
            return ended
        return batch

    def finalize(self, batch_id: str, token: str, outcome_name: str) -> BatchRecord:
        """Turn the checkpoints into output and error files and end the batch.

        Idempotent: file ids derive from the batch id and blobs are written
        atomically, so running it again after a crash gives the same result.
        A batch someone else already ended is left exactly as it is."""
        with batch_lock(batch_id):
            return self._finalize(batch_id, token, outcome_name)

    def _finalize(self, batch_id: str, token: str, outcome_name: str) -> BatchRecord:
        ended = self.batch(batch_id)
        if ended.is_terminal:  # e.g. a retry after the gateway died past the transition
            if not keeps_parts(ended):
                self._remove_parts(batch_id)  # its parts are debris now; nothing reads them
            return ended
        batch = self._leased(batch_id, token)
        outcome = OUTCOMES["cancelled"] if batch.status == "cancelling" else OUTCOMES[outcome_name]
        if outcome.target == "completed" and batch.status == "in_progress":
            self.store.transition_batch(
                batch_id, ["in_progress"], status="finalizing", **st.stamp("finalizing", now())
            )
        try:
            self._write_results(self.batch(batch_id), outcome)
        except Exception as exc:
            log.exception("finalize of %s failed", batch_id)
            return self.fail(
                batch_id,
                None,
                [
                    {
                        "code": FINALIZATION_FAILED,
                        "param": None,
                        "line": None,
                        "message": f"{INTERRUPTED_FINALIZE}: {exc}. Its finished lines can "
                        f"still be read at GET /v1/batches/{batch_id}/results.",
                    }
                ],
            )
        return self.batch(batch_id)

    def _write_results(self, batch: BatchRecord, outcome: Outcome) -> None:
        chunks = self.store.get_chunks(batch.id)
        if not chunks:
            raise RuntimeError("no execution plan was recorded")
        out_id, err_id = derived_file_id(batch.id, "output"), derived_file_id(batch.id, "error")
        completed = failed = unrun = 0
        ranges: list[tuple[int, int, int, int, int]] = []
        meta_name = derived_blob_name(batch.id, "meta")
        with (
            self.blobs.writer(out_id) as out,
            self.blobs.writer(err_id) as err,
            self.blobs.writer(meta_name) as meta,
        ):
            for chunk in chunks:
                out_start, err_start = out.tell(), err.tell()
                if chunk.done:
                    self._copy_part(part_name(batch.id, chunk.chunk_index, "out"), out)
                    self._copy_part(part_name(batch.id, chunk.chunk_index, "err"), err)
                    completed += chunk.completed
                    failed += chunk.failed
                else:
                    unrun += self._write_unrun(batch, chunk, outcome, err)
                self._copy_meta(batch, chunk, meta)
                ranges.append((chunk.chunk_index, out_start, out.tell(), err_start, err.tell()))
        # Before the parts go: a live reader switches from parts to these ranges.
        self.store.set_result_ranges(batch.id, ranges)
        at = now()
        expires_at = (
            batch.created_at + batch.output_expires_after_seconds
            if batch.output_expires_after_seconds
            else None
        )
        failed += unrun
        files = {"output": (out_id, completed), "error": (err_id, failed)}
        ids: dict[str, str | None] = {}
        for kind, (file_id, count) in files.items():
            if count == 0:
                self.blobs.delete(file_id)
                ids[kind] = None
                continue
            ids[kind] = file_id
            if self.store.get_file(file_id, include_gone=True) is None:
                self.store.insert_file(
                    FileRecord(
                        id=file_id,
                        api_key_id=batch.api_key_id,
                        filename=f"{batch.id}_{kind}.jsonl",
                        purpose="batch_output",
                        bytes=self.blobs.size(file_id),
                        created_at=at,
                        expires_at=expires_at,
                        deleted_at=None,
                        blob_name=file_id,
                        mime_type="application/jsonl",
                    )
                )
        crash_point("ledger:finalize_after_files")
        usage = sum_usage([c.usage for c in chunks if c.done])
        model = next((c.model for c in chunks if c.done and c.model), None) or batch.model
        moved = self.store.transition_batch(
            batch.id,
            st.sources_of(outcome.target),
            status=outcome.target,
            output_file_id=ids["output"],
            error_file_id=ids["error"],
            completed=completed,
            failed=failed,
            usage=usage,
            model=model,
            lease_token=None,
            lease_expires_at=None,
            **({"errors": [outcome.error]} if outcome.error else {}),
            **st.stamp(outcome.target, at),
        )
        if not moved:  # ended by someone else meanwhile: leave it exactly as set
            for file_id in (out_id, err_id):
                self.store.update_file(file_id, deleted_at=at)
                self.blobs.delete(file_id)
            self.blobs.delete(meta_name)
        elif unrun and self.on_chunk is not None:
            # Lines no request was sent for (cancel, expiry, budget) fail
            # here, not in a checkpoint: heard once, with the transition.
            self.on_chunk(0, unrun, None, batch_id=batch.id, run=None)
        crash_point("ledger:finalize_after_transition")
        self._remove_parts(batch.id)

    def _copy_part(self, name: str, out: Any) -> None:
        if not self.blobs.exists(name):
            raise RuntimeError(f"checkpoint part {name} is missing")
        with self.blobs.open(name) as handle:
            shutil.copyfileobj(handle, out, 1 << 20)

    def _copy_meta(self, batch: BatchRecord, chunk: ChunkRecord, meta: Any) -> None:
        """The chunk's per-line meta; for a chunk that never ran (or was
        checkpointed without meta) one line per input line with what the
        input says: custom_id and requested model."""
        name = part_name(batch.id, chunk.chunk_index, "meta")
        if chunk.done and self.blobs.exists(name):
            self._copy_part(name, meta)
            return
        data = self.chunk_input(batch.id, chunk.chunk_index)
        rows = []
        for _, raw in iter_chunk_lines(data):
            line = orjson.loads(raw)
            body = line.get("body") if isinstance(line.get("body"), dict) else {}
            rows.append(
                {
                    "custom_id": line.get("custom_id"),
                    "model": body.get("model"),
                    "provider": None,
                    "latency_ms": None,
                    "attempts": 0 if not chunk.done else None,
                }
            )
        meta.write(meta_lines(rows))

    def _write_unrun(
        self, batch: BatchRecord, chunk: ChunkRecord, outcome: Outcome, err: Any
    ) -> int:
        """Error lines for a chunk that never ran (cancel or expiry)."""
        if outcome.unrun_code is None:
            raise RuntimeError(f"chunk {chunk.chunk_index} never finished")
        data = self.chunk_input(batch.id, chunk.chunk_index)
        count = 0
        for _, raw in iter_chunk_lines(data):
            custom_id = orjson.loads(raw).get("custom_id")
            err.write(
                result_line(custom_id, None, code=outcome.unrun_code, message=outcome.unrun_message)
            )
            count += 1
        return count

    def _remove_parts(self, batch_id: str) -> None:
        remove_parts(self.store, self.blobs, batch_id)
