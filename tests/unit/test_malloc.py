"""The gateway limits glibc's malloc arenas at start, unless told otherwise."""

from __future__ import annotations

import pytest

from gateway.malloc import limit_arenas


def test_arenas_are_limited_unless_the_environment_sets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is True  # glibc on Linux: mallopt accepted it
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_arenas() is False
