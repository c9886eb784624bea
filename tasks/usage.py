"""Summing token usage over response bodies (`usage`).

Chat and completions bodies report `prompt_tokens`/`completion_tokens`;
responses bodies report `input_tokens`/`output_tokens`. Both map onto the
batch's usage shape. Plain dicts in, plain dicts out.
"""

from __future__ import annotations

from typing import Any

Usage = dict[str, Any]


def empty_usage() -> Usage:
    return {
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _details(usage: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        value = usage.get(name)
        if isinstance(value, dict):
            return value
    return {}


def usage_of(body: Any) -> Usage:
    """The usage of one response body, in the batch's shape (zeros when absent)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return empty_usage()
    input_tokens = _int(usage.get("input_tokens", usage.get("prompt_tokens")))
    output_tokens = _int(usage.get("output_tokens", usage.get("completion_tokens")))
    total = _int(usage.get("total_tokens")) or input_tokens + output_tokens
    cached = _int(
        _details(usage, "input_tokens_details", "prompt_tokens_details").get("cached_tokens")
    )
    reasoning = _int(
        _details(usage, "output_tokens_details", "completion_tokens_details").get(
            "reasoning_tokens"
        )
    )
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": total,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }


def add_into(total: Usage, usage: Usage) -> None:
    """Add `usage` to `total` in place: a chunk sums one answer per line, and
    a new dict per line was most of what summing cost."""
    total["input_tokens"] += usage["input_tokens"]
    total["output_tokens"] += usage["output_tokens"]
    total["total_tokens"] += usage["total_tokens"]
    total["input_tokens_details"]["cached_tokens"] += usage["input_tokens_details"]["cached_tokens"]
    total["output_tokens_details"]["reasoning_tokens"] += usage["output_tokens_details"][
        "reasoning_tokens"
    ]


def sum_usage(usages: list[Usage | None]) -> Usage:
    total = empty_usage()
    for usage in usages:
        if usage:
            add_into(total, usage)
    return total
