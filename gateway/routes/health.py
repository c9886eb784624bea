"""Placeholder: filled in by the work on this route group."""

from __future__ import annotations

routes: list = []
