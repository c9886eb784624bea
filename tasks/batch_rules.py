"""Checking a create-batch request: pure rules, plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/responses",
        "/v1/moderations",
    }
)
COMPLETION_WINDOWS = frozenset({"24h"})
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
OUTPUT_EXPIRY_RANGE = (3600, 2_592_000)


@dataclass(frozen=True)
class BatchRequest:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    output_expires_after_seconds: int | None


@dataclass(frozen=True)
class RuleViolation:
    message: str
    param: str


def _check_metadata(metadata: Any) -> RuleViolation | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return RuleViolation("metadata must be an object of string pairs.", "metadata")
    if len(metadata) > MAX_METADATA_PAIRS:
        return RuleViolation(f"metadata may hold at most {MAX_METADATA_PAIRS} pairs.", "metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            return RuleViolation(
                f"metadata keys may be at most {MAX_METADATA_KEY} characters.", "metadata"
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            return RuleViolation(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE} characters.",
                "metadata",
            )
    return None


def _check_output_expiry(value: Any) -> tuple[int | None, RuleViolation | None]:
    if value is None:
        return None, None
    param = "output_expires_after"
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        return None, RuleViolation(
            "output_expires_after.anchor must be 'created_at'.", f"{param}.anchor"
        )
    seconds = value.get("seconds")
    # JSON has one number type: 7200.0 is the integer 7200 (as JSON Schema says).
    if isinstance(seconds, float) and seconds.is_integer():
        seconds = int(seconds)
    low, high = OUTPUT_EXPIRY_RANGE
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
        return None, RuleViolation(
            f"output_expires_after.seconds must be an integer between {low} and {high}.",
            f"{param}.seconds",
        )
    return seconds, None


def parse_batch_request(body: Any) -> BatchRequest | RuleViolation:
    """The create-batch body as a `BatchRequest`, or the first rule it breaks."""
    if not isinstance(body, dict):
        return RuleViolation("The request body must be a JSON object.", "body")
    for field in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(field), str) or not body[field]:
            return RuleViolation(f"Missing required parameter: '{field}'.", field)
    if body["endpoint"] not in ENDPOINTS:
        return RuleViolation(
            f"Invalid endpoint '{body['endpoint']}'. Supported: {', '.join(sorted(ENDPOINTS))}.",
            "endpoint",
        )
    if body["completion_window"] not in COMPLETION_WINDOWS:
        return RuleViolation("completion_window must be '24h'.", "completion_window")
    violation = _check_metadata(body.get("metadata"))
    if violation:
        return violation
    seconds, violation = _check_output_expiry(body.get("output_expires_after"))
    if violation:
        return violation
    return BatchRequest(
        input_file_id=body["input_file_id"],
        endpoint=body["endpoint"],
        completion_window=body["completion_window"],
        metadata=body.get("metadata"),
        output_expires_after_seconds=seconds,
    )
