"""The shape of one output- or error-file line."""

from __future__ import annotations

from typing import Any

import orjson

from storage.ids import new_request_id


def result_line(
    custom_id: str | None,
    response: dict[str, Any] | None,
    *,
    code: str | None = None,
    message: str | None = None,
) -> bytes:
    """`{"id", "custom_id", "response", "error"}` as one JSONL line."""
    error = None if code is None else {"code": code, "message": message}
    return (
        orjson.dumps(
            {"id": new_request_id(), "custom_id": custom_id, "response": response, "error": error}
        )
        + b"\n"
    )
