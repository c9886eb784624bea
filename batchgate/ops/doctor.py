"""`batchgate doctor`: is the DuckDB file consistent with the blob directory?

A crash can stop the gateway between writing a blob and recording it, or
between ending a batch and removing its checkpoint parts. Recovery is meant
to leave nothing behind; this module checks that it did. Every check is a
plain function over a `MetadataStore` and a `BlobStore` and only reads:

- orphan blobs: bytes on disk that no live file row and no live batch owns;
- missing blobs: live file rows whose bytes are gone;
- temporary files left by a crash mid-write;
- checkpoint parts of batches that have ended (or never existed), and done
  chunks of live batches whose parts are missing;
- batch counts that disagree with the chunk checkpoints;
- output/error files whose line counts differ from `request_counts`, or that
  name a `custom_id` twice.

The gateway must be stopped: DuckDB lets one process open the file.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from storage.records import BatchRecord, ChunkRecord
from tasks.ledger import DERIVED_SUFFIXES, derived_blob_name, derived_file_id, part_name

PART_RE = re.compile(r"^(?P<batch>.+)\.c(?P<index>\d{6})\.(?P<kind>out|err)$")
UNRUN_STATUSES = frozenset({"cancelled", "expired"})


@dataclass(frozen=True)
class Problem:
    kind: str  # orphan_blob, missing_blob, temp_file, stale_part, missing_part, counts, file_lines
    subject: str  # a blob name, file id or batch id
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<14} {self.subject}: {self.detail}"


@dataclass
class DoctorReport:
    problems: list[Problem] = field(default_factory=list)
    blobs: int = 0
    files: int = 0
    batches: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> Counter[str]:
        return Counter(p.kind for p in self.problems)

    def render(self) -> str:
        head = f"checked {self.blobs} blobs, {self.files} live files, {self.batches} batches: " + (
            "no problems" if self.ok else f"{len(self.problems)} problem(s)"
        )
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def examine(store: MetadataStore, blobs: BlobStore) -> DoctorReport:
    """Run every check; nothing is changed."""
    batches = _all_batches(store)
    chunks = {b.id: store.get_chunks(b.id) for b in batches}
    names = blobs.names()
    report = DoctorReport(blobs=len(names), batches=len(batches))
    live_rows = store.query("SELECT id, blob_name FROM files WHERE deleted_at IS NULL")
    report.files = len(live_rows)
    report.problems += check_temp_files(blobs)
    report.problems += check_missing_blobs(live_rows, set(names))
    report.problems += check_orphans(names, {r[1] for r in live_rows}, batches, chunks)
    report.problems += check_parts(blobs, batches, chunks)
    for batch in batches:
        report.problems += check_counts(batch, chunks[batch.id])
        report.problems += check_result_files(store, blobs, batch)
    return report


def _all_batches(store: MetadataStore) -> list[BatchRecord]:
    return [*store.live_batches(), *store.terminal_batches()]


def check_temp_files(blobs: BlobStore) -> list[Problem]:
    return [
        Problem("temp_file", p.name, "left by a crash mid-write")
        for p in sorted(blobs.root.glob(".*.tmp"))
    ]


def check_missing_blobs(live_rows: Iterable[tuple[str, str]], on_disk: set[str]) -> list[Problem]:
    return [
        Problem("missing_blob", file_id, f"live file row, but blob {blob!r} is gone")
        for file_id, blob in live_rows
        if blob not in on_disk
    ]


def check_orphans(
    names: Iterable[str],
    live_blobs: set[str],
    batches: list[BatchRecord],
    chunks: dict[str, list[ChunkRecord]],
) -> list[Problem]:
    """Blobs nobody owns. Parts of live batches and the derived result files
    of a batch still finalizing are owned: recovery will use or replace them."""
    owned = set(live_blobs)
    for batch in batches:
        # the results table, summary and per-line meta of any batch
        owned.update(derived_blob_name(batch.id, kind) for kind in DERIVED_SUFFIXES)
        if batch.is_terminal:
            continue
        owned.update(derived_file_id(batch.id, kind) for kind in ("output", "error"))
        for chunk in chunks[batch.id]:
            owned.update(part_name(batch.id, chunk.chunk_index, k) for k in ("out", "err", "meta"))
    return [
        Problem("orphan_blob", name, "no live file row or batch owns it")
        for name in names
        if name not in owned and not PART_RE.match(name)  # parts: see check_parts
    ]


def check_parts(
    blobs: BlobStore, batches: list[BatchRecord], chunks: dict[str, list[ChunkRecord]]
) -> list[Problem]:
    problems = []
    by_id = {b.id: b for b in batches}
    for batch in batches:
        for chunk in chunks[batch.id]:
            for kind in ("out", "err"):
                name = part_name(batch.id, chunk.chunk_index, kind)
                present = blobs.exists(name)
                if batch.is_terminal and present:
                    problems.append(
                        Problem("stale_part", name, f"checkpoint part of a {batch.status} batch")
                    )
                elif not batch.is_terminal and chunk.done and not present:
                    problems.append(
                        Problem("missing_part", name, "chunk is marked done but its part is gone")
                    )
    for name in blobs.names():
        match = PART_RE.match(name)
        if match and match["batch"] not in by_id:
            problems.append(Problem("stale_part", name, "checkpoint part of an unknown batch"))
    return problems


def check_counts(batch: BatchRecord, chunks: list[ChunkRecord]) -> list[Problem]:
    """The batch's counts must be what its chunk checkpoints say."""
    if not chunks:
        return []
    done = [c for c in chunks if c.done]
    expect_completed = sum(c.completed for c in done)
    expect_failed = sum(c.failed for c in done)
    if batch.status in UNRUN_STATUSES:
        expect_failed += sum(c.line_count for c in chunks if not c.done)
    problems = []
    if (batch.completed, batch.failed) != (expect_completed, expect_failed):
        problems.append(
            Problem(
                "counts",
                batch.id,
                f"{batch.status}: completed/failed {batch.completed}/{batch.failed}, "
                f"chunks say {expect_completed}/{expect_failed}",
            )
        )
    planned = sum(c.line_count for c in chunks)
    if batch.status != "failed" and batch.total != planned:
        problems.append(
            Problem("counts", batch.id, f"total {batch.total}, chunks plan {planned} lines")
        )
    if batch.status == "completed" and len(done) != len(chunks):
        problems.append(
            Problem("counts", batch.id, f"completed with {len(chunks) - len(done)} chunks not done")
        )
    if batch.status in {"completed", *UNRUN_STATUSES} and batch.completed + batch.failed != (
        batch.total
    ):
        problems.append(
            Problem(
                "counts",
                batch.id,
                f"completed {batch.completed} + failed {batch.failed} != total {batch.total}",
            )
        )
    return problems


def check_result_files(store: MetadataStore, blobs: BlobStore, batch: BatchRecord) -> list[Problem]:
    """Output and error files hold exactly `request_counts` lines, each
    `custom_id` once across both (files since deleted or expired are skipped)."""
    if not batch.is_terminal or batch.status == "failed":
        return []
    problems: list[Problem] = []
    seen: Counter[str] = Counter()
    for file_id, expected, label in (
        (batch.output_file_id, batch.completed, "output"),
        (batch.error_file_id, batch.failed, "error"),
    ):
        if file_id is None:
            if expected:
                problems.append(
                    Problem("file_lines", batch.id, f"no {label} file but {expected} lines counted")
                )
            continue
        record = store.get_file(file_id, include_gone=True)
        if record is None:
            problems.append(
                Problem("missing_blob", file_id, f"{label} file of {batch.id} has no row")
            )
            continue
        if record.deleted_at is not None or not blobs.exists(record.blob_name):
            continue  # deleted or swept by retention; missing bytes are reported elsewhere
        count = invalid = 0
        for custom_id in _custom_ids(blobs.iter_bytes(record.blob_name)):
            count += 1
            if custom_id is None:
                invalid += 1
            else:
                seen[custom_id] += 1
        if invalid:
            problems.append(
                Problem("file_lines", file_id, f"{invalid} line(s) are not JSON objects")
            )
        if count != expected:
            problems.append(
                Problem(
                    "file_lines",
                    file_id,
                    f"{label} file of {batch.id} has {count} lines, request_counts say {expected}",
                )
            )
    repeated = sorted(c for c, n in seen.items() if n > 1)
    if repeated:
        problems.append(
            Problem(
                "file_lines",
                batch.id,
                f"{len(repeated)} custom_id(s) appear more than once, e.g. {repeated[:3]}",
            )
        )
    return problems


def _custom_ids(blocks: Iterator[bytes]) -> Iterator[str | None]:
    """The `custom_id` of every line of a JSONL stream, read block by block
    (None for a line that is not a JSON object)."""
    rest = b""
    for block in blocks:
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from (_custom_id(line) for line in lines if line.strip())
    if rest.strip():
        yield _custom_id(rest)


def _custom_id(line: bytes) -> str | None:
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return str(parsed.get("custom_id")) if isinstance(parsed, dict) else None
