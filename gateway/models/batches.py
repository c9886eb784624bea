"""The Batch API's bodies: create (as OpenAI has it) and the dry-run
estimate. The messages are those the Batch API answers with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from gateway.models.body import WHOLE_NUMBER, Body, Expect, rule_error
from gateway.models.objects import MetadataPairs
from storage.records import BatchEndpoint, CompletionWindow
from tasks.batch_rules import (
    ENDPOINTS,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    OUTPUT_EXPIRY_RANGE,
    BatchRequest,
)

MIN_EXPIRY, MAX_EXPIRY = OUTPUT_EXPIRY_RANGE


def _missing(param: str) -> str:
    return f"Missing required parameter: '{param}'."


def _checked_metadata(value: Any) -> Any:
    """Metadata's limits, each with its own message (before the type check,
    which then only confirms them)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise rule_error("metadata must be an object of string pairs.", None)
    if len(value) > MAX_METADATA_PAIRS:
        raise rule_error(f"metadata may hold at most {MAX_METADATA_PAIRS} pairs.", None)
    for key, text in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise rule_error(f"metadata keys may be at most {MAX_METADATA_KEY} characters.", None)
        if not isinstance(text, str) or len(text) > MAX_METADATA_VALUE:
            raise rule_error(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE} characters.",
                None,
            )
    return value


Metadata = Annotated[MetadataPairs, BeforeValidator(_checked_metadata)]


class OutputExpiry(Body):
    """When the batch's output and error files expire."""

    anchor: Annotated[
        Literal["created_at"],
        Expect("output_expires_after.anchor must be 'created_at'.", code=None),
    ]
    seconds: Annotated[
        int,
        Field(ge=MIN_EXPIRY, le=MAX_EXPIRY),
        WHOLE_NUMBER,
        Expect(
            f"output_expires_after.seconds must be an integer between {MIN_EXPIRY} and "
            f"{MAX_EXPIRY}.",
            code=None,
        ),
    ]


INPUT_FILE_ID = Annotated[str, Field(min_length=1), Expect(_missing("input_file_id"), code=None)]
ENDPOINT = Annotated[
    BatchEndpoint,
    Expect(
        f"Invalid endpoint '{{value}}'. Supported: {', '.join(sorted(ENDPOINTS))}.",
        code=None,
        type_message=_missing("endpoint"),
    ),
]


WINDOW = Annotated[
    CompletionWindow,
    Expect(
        "completion_window must be '24h'.", code=None, type_message=_missing("completion_window")
    ),
]


class BatchCreate(Body):
    """POST /v1/batches."""

    input_file_id: INPUT_FILE_ID
    endpoint: ENDPOINT
    completion_window: WINDOW
    metadata: Metadata = None
    output_expires_after: Annotated[
        OutputExpiry | None,
        Expect("output_expires_after.anchor must be 'created_at'.", code=None),
    ] = None

    def request(self) -> BatchRequest:
        return BatchRequest(
            input_file_id=self.input_file_id,
            endpoint=self.endpoint,
            completion_window=self.completion_window,
            metadata=self.metadata,
            output_expires_after_seconds=(
                None if self.output_expires_after is None else self.output_expires_after.seconds
            ),
        )


class BatchEstimateRequest(BatchCreate):
    """POST /v1/batches/estimate: what a create would take, the window optional."""

    completion_window: WINDOW = "24h"


REQUESTS = (BatchCreate, BatchEstimateRequest)
