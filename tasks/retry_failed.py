"""Which lines a retry of a batch's failures resends.

A line failed if it is in the error file. Its error code, the one `?codes=`
matches, is what the results table calls `error_code`: the line's own
`error.code` (batchgate's: `batch_expired`, `timeout`, ...), else the
provider's `body.error.code`, else the HTTP status as text (`"500"`); a
filter matches either of the last two, so `codes=500` finds a 500 whose
body names a code. The new input holds the original request lines,
byte for byte, in input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from storage.jsonl import iter_lines

MAX_CODES_CHARS = 2000


def parse_codes(raw: str | None) -> frozenset[str] | None:
    """`?codes=429,500,batch_expired` as a set; None for "every failure"."""
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_CODES_CHARS:
        raise ValueError(f"Invalid 'codes': longer than {MAX_CODES_CHARS} characters.")
    codes = frozenset(c.strip() for c in raw.split(",") if c.strip())
    return codes or None


def line_codes(line: dict[str, Any]) -> set[str]:
    """The codes an error line answers to."""
    error = line.get("error")
    if isinstance(error, dict) and error.get("code") is not None:
        return {str(error["code"])}
    codes: set[str] = set()
    response = line.get("response")
    if isinstance(response, dict):
        body = response.get("body")
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = body["error"].get("code")
            if code is not None:
                codes.add(str(code))
        if response.get("status_code") is not None:
            codes.add(str(response["status_code"]))
    return codes


def failed_custom_ids(error_blocks: Iterable[bytes], codes: frozenset[str] | None) -> set[str]:
    """The custom_ids of the error file's lines (those with one of `codes`)."""
    found: set[str] = set()
    for line in iter_lines(error_blocks):
        if line.data is None or not line.data.strip():
            continue
        parsed = orjson.loads(line.data)
        custom_id = parsed.get("custom_id")
        if isinstance(custom_id, str) and (codes is None or codes & line_codes(parsed)):
            found.add(custom_id)
    return found


def select_lines(input_blocks: Iterable[bytes], custom_ids: set[str]) -> Iterator[bytes]:
    """The input's request lines whose custom_id is in `custom_ids`, as stored."""
    for line in iter_lines(input_blocks):
        if line.data is None or not line.data.strip():
            continue
        try:
            custom_id = orjson.loads(line.data).get("custom_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if custom_id in custom_ids:
            data = line.data.removeprefix(b"\xef\xbb\xbf")
            yield data if data.endswith(b"\n") else data + b"\n"
