"""OpenAI's File and Batch objects, and the lists and deletions around them:
the only way a record reaches a client. They pick the OpenAI fields and
nothing else (no owner, blob name or MIME type). TypedDicts, so a page of
10,000 files costs what building the dicts costs."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, cast

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from storage.records import (
    BatchEndpoint,
    BatchRecord,
    BatchStatus,
    CompletionWindow,
    FilePurpose,
    FileRecord,
)
from tasks.batch_rules import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE

UnixTime = Annotated[int, Field(description="Unix seconds.")]
# A batch's metadata: up to 16 pairs of short strings.
MetadataPairs = Annotated[
    dict[
        Annotated[str, Field(max_length=MAX_METADATA_KEY)],
        Annotated[str, Field(max_length=MAX_METADATA_VALUE)],
    ]
    | None,
    Field(max_length=MAX_METADATA_PAIRS),
]


@with_config(ConfigDict(extra="forbid"))
class File(TypedDict):
    id: str
    object: Literal["file"]
    bytes: Annotated[int, Field(ge=0)]
    created_at: UnixTime
    filename: str
    purpose: FilePurpose
    expires_at: Annotated[int | None, Field(description="Unix seconds; null: never expires.")]


class FileDeleted(TypedDict):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


class BatchError(TypedDict):
    code: str
    message: str
    param: NotRequired[str | None]
    line: NotRequired[int | None]


class BatchErrors(TypedDict):
    object: Literal["list"]
    data: list[BatchError]


class RequestCounts(TypedDict):
    total: int
    completed: int
    failed: int


class InputTokensDetails(TypedDict):
    cached_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class BatchUsage(TypedDict):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails


class Batch(TypedDict):
    id: str
    object: Literal["batch"]
    endpoint: BatchEndpoint
    errors: BatchErrors | None
    input_file_id: str
    completion_window: CompletionWindow
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: UnixTime
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: MetadataPairs
    model: str | None
    usage: BatchUsage | None


class FileList(TypedDict):
    object: Literal["list"]
    data: list[File]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchList(TypedDict):
    object: Literal["list"]
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


def file_object(record: FileRecord) -> File:
    """The OpenAI File object for a record."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "expires_at": record.expires_at,
    }


def batch_object(record: BatchRecord) -> Batch:
    """The OpenAI Batch object for a record."""
    # The stored lists were written from these shapes (tasks/validate.py, tasks/usage.py).
    errors = cast("list[BatchError]", record.errors)
    usage = cast("BatchUsage | None", record.usage)
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": record.created_at,
        "in_progress_at": record.in_progress_at,
        "expires_at": record.expires_at,
        "finalizing_at": record.finalizing_at,
        "completed_at": record.completed_at,
        "failed_at": record.failed_at,
        "expired_at": record.expired_at,
        "cancelling_at": record.cancelling_at,
        "cancelled_at": record.cancelled_at,
        "request_counts": {
            "total": record.total,
            "completed": record.completed,
            "failed": record.failed,
        },
        "metadata": record.metadata,
        "model": record.model,
        "usage": usage,
    }


ANSWERS: tuple[Any, ...] = (File, FileDeleted, FileList, Batch, BatchList)
