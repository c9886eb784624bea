"""Query results remembered until a write could change them.

The gateway is the only process that opens the metadata database, so it
sees every write: a remembered result stays good until a write touches one
of the scopes it was read under. Each scope has a generation, bumped after a
write commits; an entry holds the generations it was read at and is stale as
soon as one has moved on. The generations are taken before the read, so a
write that commits while a read runs always makes that read's entry stale.

Polls (`retrieve batch`), lists and file lookups are most of an API's
traffic, and a DuckDB statement costs a millisecond or more to plan even on
a tiny table; serving them from memory keeps that CPU free for the answers
that must go to the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar, cast

T = TypeVar("T")
MAX_ENTRIES = 20_000

Stamp = tuple[int, ...]


class ReadCache:
    """Results keyed by query, each valid while its scopes are unchanged
    (and, if it says so, until a wall-clock time: a file page stops being
    right once one of its files expires)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._generations: dict[str, int] = {}
        self._epoch = 0  # bumped by `invalidate_all`: every stamp moves on
        # Any: each key's value has the type its own `load` gave; `remembered`
        # hands it back under that type.
        self._entries: dict[Hashable, tuple[Stamp, float | None, Any]] = {}
        self._lock = threading.Lock()

    def stamp(self, scopes: Sequence[str]) -> Stamp:
        """The generations of `scopes` now; take it before reading."""
        generations = self._generations
        return (self._epoch, *(generations.get(s, 0) for s in scopes))

    def invalidate(self, *scopes: str) -> None:
        """Call after a write to `scopes` has committed."""
        with self._lock:
            for scope in scopes:
                self._generations[scope] = self._generations.get(scope, 0) + 1

    def invalidate_all(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()

    def remembered(
        self,
        key: Hashable,
        scopes: Sequence[str],
        load: Callable[[], T],
        *,
        at: float,
        valid_until: Callable[[T], float | None] = lambda _: None,
    ) -> T:
        """`load()`'s result for `key`, read again only when a write to one
        of `scopes` has committed since (or `at` has reached the time
        `valid_until` gave for it). Results that are None are not kept."""
        stamp = self.stamp(scopes)
        entry = self._entries.get(key)
        if entry is not None:
            kept_stamp, until, value = entry
            if kept_stamp == stamp and (until is None or at < until):
                return cast(T, value)
        value = load()
        if value is not None:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (stamp, valid_until(value), value)
        return value
