"""Placeholder: filled in by the work on this route group."""

from __future__ import annotations

routes: list = []

import contextlib


@contextlib.asynccontextmanager
async def background_tasks(state):  # noqa: ANN001
    yield
