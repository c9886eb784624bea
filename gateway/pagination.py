"""Query parameters of list routes and the OpenAI list envelope.

Pure functions: each parser returns the value or raises a 400 naming the
parameter, so every list route validates the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.errors import bad_request


def parse_int(raw: str) -> int | None:
    """Plain decimal digits only: no sign, spaces, underscores or exponent
    (Python's int() would take " 5" and "1_0")."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)


def parse_limit(query: Mapping[str, str], *, default: int, maximum: int, minimum: int = 1) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    value = parse_int(raw)
    if value is None:
        raise bad_request(
            f"Invalid 'limit': expected an integer, got {raw!r}.",
            param="limit",
            code="invalid_value",
        )
    if not minimum <= value <= maximum:
        raise bad_request(
            f"Invalid 'limit': must be between {minimum} and {maximum}.",
            param="limit",
            code="invalid_value",
        )
    return value


def parse_choice(
    query: Mapping[str, str], name: str, choices: Iterable[str], default: str | None = None
) -> str | None:
    raw = query.get(name)
    if raw is None:
        return default
    allowed = sorted(choices)
    if raw not in allowed:
        raise bad_request(
            f"Invalid '{name}': {raw!r}. Expected one of {', '.join(allowed)}.",
            param=name,
            code="invalid_value",
        )
    return raw


def parse_order(query: Mapping[str, str]) -> str:
    """A list's `order`: "asc" is creation order, "desc" (the default) its
    exact reverse; objects created in the same second keep their order."""
    return parse_choice(query, "order", ("asc", "desc"), default="desc") or "desc"


def list_envelope(data: Sequence[Mapping[str, object]], has_more: bool) -> dict[str, object]:
    """`{"object": "list", "data", "first_id", "last_id", "has_more"}`."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
