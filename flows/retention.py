"""Placeholder: the retention flow lands here."""

from __future__ import annotations

from prefect import flow


@flow(name="retention")
def retention() -> int:
    return 0
