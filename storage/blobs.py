"""File bytes on local disk, addressed by blob name.

Writes go to a temporary file in the same directory and are renamed into
place only when complete, so a crash never leaves a half file under a real
name. Leftover `*.tmp` files are debris a restart may delete. Blobs hold
users' prompts and results: the directory is 0700 and every blob 0600,
whatever the process umask.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from storage.private import make_private_dir, open_private

READ_BLOCK = 1 << 20


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = make_private_dir(Path(root))

    def path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad blob name: {name!r}")
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    @contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        """Open a blob for writing; it becomes visible only if the block succeeds."""
        final = self.path(name)
        tmp = self.root / f".{name}.{secrets.token_hex(4)}.tmp"
        handle = os.fdopen(open_private(tmp), "wb")
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, final)
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            raise

    def write_bytes(self, name: str, data: bytes) -> int:
        with self.writer(name) as out:
            out.write(data)
        return len(data)

    def open(self, name: str) -> BinaryIO:
        return open(self.path(name), "rb")

    def iter_bytes(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream a blob (or a byte range of it) in blocks, never whole."""
        with self.open(name) as handle:
            handle.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                size = READ_BLOCK if remaining is None else min(READ_BLOCK, remaining)
                block = handle.read(size)
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def read_range(self, name: str, start: int, end: int) -> bytes:
        with self.open(name) as handle:
            handle.seek(start)
            return handle.read(end - start)

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        """Every complete blob (temporary files excluded)."""
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def remove_debris(self) -> int:
        """Delete temporary files left by a crash mid-write."""
        removed = 0
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed += 1
        return removed
