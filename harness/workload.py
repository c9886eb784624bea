"""Benchmark inputs: realistic chat request lines, written to a JSONL file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

ENDPOINT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
_FILLER = "lorem ipsum dolor sit amet "


def chat_request(i: int, content_bytes: int = 60) -> dict[str, Any]:
    """One request line: a system and a user message, the user's text about
    `content_bytes` long (the bulk of the line for big files)."""
    text = (f"{i}: " + _FILLER * (content_bytes // len(_FILLER) + 1))[:content_bytes]
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": ENDPOINT,
        "body": {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": text},
            ],
            "max_tokens": 64,
        },
    }


def write_input(path: Path, lines: int, content_bytes: int = 60) -> int:
    """Write `lines` chat requests to `path`; return the file's size in bytes."""
    with open(path, "wb") as out:
        for i in range(lines):
            out.write(orjson.dumps(chat_request(i, content_bytes)) + b"\n")
    return path.stat().st_size
