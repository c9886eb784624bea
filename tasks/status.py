"""The batch status machine, as plain data.

    validating -> in_progress -> finalizing -> completed
    validating -> failed
    in_progress -> expired
    validating | in_progress | finalizing -> cancelling -> cancelled

Everything that changes a batch's status asks this module which moves are
legal and which timestamp a move stamps.
"""

from __future__ import annotations

from storage.records import LIVE_STATUSES, TERMINAL_STATUSES, BatchStatus

__all__ = ["LIVE_STATUSES", "TERMINAL_STATUSES", "BatchStatus"]

TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    "validating": frozenset({"in_progress", "failed", "cancelling", "expired"}),
    "in_progress": frozenset({"finalizing", "expired", "cancelling", "failed"}),
    "finalizing": frozenset({"completed", "failed", "cancelling"}),
    "cancelling": frozenset({"cancelled", "failed"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
}

# The timestamp column each status stamps when entered.
STAMPS: dict[BatchStatus, str] = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}

CANCELLABLE: frozenset[BatchStatus] = frozenset({"validating", "in_progress", "finalizing"})


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def is_live(status: str) -> bool:
    return status in LIVE_STATUSES


def sources_of(target: BatchStatus) -> list[BatchStatus]:
    """The statuses from which `target` may be entered."""
    return sorted(s for s, targets in TRANSITIONS.items() if target in targets)


def stamp(target: BatchStatus, at: int) -> dict[str, int]:
    """The fields a move into `target` sets besides the status."""
    column = STAMPS.get(target)
    return {column: at} if column else {}
