"""Reading a batch's finished lines while it runs.

Chunks finish out of order, so the cursor is not a chunk index: each chunk
is stamped with a `seq` from one sequence when it is checkpointed (and, for
a chunk that never ran, when finalize writes its error lines), and a reader
asks for the chunks stamped after the last `seq` it saw. A chunk's lines
come from its checkpoint parts while the batch runs; finalize records where
they sit in the final output and error files before it removes the parts,
so a reader that crosses finalize gets each line exactly once. Everything is
streamed in blocks: nothing holds a whole file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from storage.blobs import BlobStore
from storage.metadata import MetadataStore
from tasks.ledger import derived_file_id, part_name

KINDS = ("output", "error")
_PART = {"output": "out", "error": "err"}
_RANGE = {"output": (2, 3), "error": (4, 5)}
# The response header that carries the cursor to pass as `after` next time.
CURSOR_HEADER = "batchgate-next-cursor"
# "true" once the batch has ended and this answer held everything left.
COMPLETE_HEADER = "batchgate-results-complete"

Row = tuple[int, int, int | None, int | None, int | None, int | None]


class BadCursor(ValueError):
    pass


def parse_cursor(raw: str | None) -> int:
    """A cursor is the decimal `seq` of the last chunk read; none means "from the start"."""
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadCursor(f"Invalid 'after': {raw!r} is not a cursor this endpoint returned.")
    return int(raw)


def parse_kinds(raw: str | None) -> tuple[str, ...]:
    if raw is None or raw == "":
        return KINDS
    if raw not in KINDS:
        raise ValueError(f"Invalid 'kind': {raw!r}; expected 'output' or 'error'.")
    return (raw,)


@dataclass
class ResultsPage:
    cursor: int
    rows: list[Row]
    kinds: Sequence[str]


def results_page(
    store: MetadataStore, batch_id: str, after: int, kinds: Sequence[str]
) -> ResultsPage:
    rows = store.result_chunks(batch_id, after)
    return ResultsPage(rows[-1][0] if rows else after, rows, kinds)


def _stored_range(store: MetadataStore, batch_id: str, row: Row, kind: str) -> tuple[int, int]:
    """The chunk's byte range in the final file, read again from the store
    (finalize may have recorded it since the page was read); (0, 0) if none."""
    start, end = _RANGE[kind]
    if row[start] is None:
        fresh = store.result_chunks(batch_id, row[0] - 1, limit=1)
        if fresh and fresh[0][1] == row[1]:
            row = fresh[0]
    return (row[start] or 0, row[end] or 0) if row[start] is not None else (0, 0)


def chunk_blocks(
    store: MetadataStore, blobs: BlobStore, batch_id: str, row: Row, kind: str
) -> Iterator[bytes]:
    """One chunk's lines of one kind: from the final file once finalize has
    placed them there, else from the checkpoint part (opened before it can
    be removed; if it is gone already, finalize has recorded the range)."""
    start_col, _ = _RANGE[kind]
    if row[start_col] is None:
        try:
            handle = blobs.open(part_name(batch_id, row[1], _PART[kind]))
        except FileNotFoundError:
            pass
        else:
            with handle:
                while block := handle.read(1 << 20):
                    yield block
            return
    start, end = _stored_range(store, batch_id, row, kind)
    if end <= start:
        return
    try:
        yield from blobs.iter_bytes(derived_file_id(batch_id, kind), start, end)
    except FileNotFoundError:  # the file was deleted (by its owner or retention)
        return


def page_blocks(
    store: MetadataStore, blobs: BlobStore, batch_id: str, page: ResultsPage
) -> Iterator[bytes]:
    for row in page.rows:
        for kind in page.kinds:
            yield from chunk_blocks(store, blobs, batch_id, row, kind)
