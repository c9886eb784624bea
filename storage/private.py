"""Owner-only modes for the data directory and everything in it.

The data directory holds users' prompts and results, the metadata file and
the generated secrets, so no other local user may read any of it, whatever
the umask of the shell that started batchgate. Long-running commands set
the process umask to `PRIVATE_UMASK` (children - DuckDB, the Prefect server,
flow runs, log files - inherit it); the helpers here make the modes explicit
where batchgate creates files itself and tighten what an older install left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_UMASK = 0o077
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) owner-only; an existing one is
    tightened, since an older install created it with the umask's mode."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def open_private(path: Path) -> int:
    """A new file opened for writing, owner-only from its first byte (a
    chmod after writing would leave a window where others can read it)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def write_private_text(path: Path, text: str) -> None:
    """Write a small secret file atomically: a temporary owner-only file in
    the same directory, synced, then renamed over `path`."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with os.fdopen(open_private(tmp), "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tighten_tree(root: Path) -> int:
    """Make every directory under `root` 0700 and every file 0600 (an older
    install's 0755/0644 paths, or files another tool dropped there). Returns
    how many paths changed. Symlinks are left alone: chmod would follow them
    out of the directory."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        changed += _chmod_if_needed(here, DIR_MODE)
        for name in filenames:
            changed += _chmod_if_needed(here / name, FILE_MODE)
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return changed


def _chmod_if_needed(path: Path, mode: int) -> int:
    """chmod one path unless it is a symlink or already right; a file that
    vanished meanwhile (a temporary file renamed) needs nothing."""
    with contextlib.suppress(FileNotFoundError):
        info = path.lstat()
        if not path.is_symlink() and info.st_mode & 0o7777 != mode:
            path.chmod(mode)
            return 1
    return 0
