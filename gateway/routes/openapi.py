"""GET /openapi.json: the OpenAPI 3.1 document of the public routes.

Written out from small dicts rather than generated from handlers: the
handlers parse requests by hand (streaming uploads), so there is nothing
to introspect, and a written document states the contract plainly. It is
fuzzed with schemathesis, so every status a route can answer is listed and
nullable fields use type arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.models import admin as admin_models
from gateway.models import batches as batch_models
from gateway.models import objects
from gateway.models import webhooks as webhook_models
from gateway.models.schemas import component_schemas
from gateway.routes.files import (
    ALL_PURPOSES,
    MAX_EXPIRES_SECONDS,
    MAX_LIST_LIMIT,
    MIN_EXPIRES_SECONDS,
    UPLOAD_PURPOSES,
)
from gateway.routes.results import FORMATS as RESULT_FORMATS
from gateway.routes.results import MAX_EPOCH_SECONDS, USAGE_GROUPS
from storage.records import USAGE_COUNTS
from tasks import live_results
from tasks.batch_rules import (
    ENDPOINTS,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
)
from tasks.retry_failed import MAX_CODES_CHARS
from tasks.status import TRANSITIONS
from tasks.webhooks import EVENT_TYPES

# Quoted from the rules they document, so the document cannot drift from them.
BATCH_ENDPOINTS = sorted(ENDPOINTS)
BATCH_STATUSES = list(TRANSITIONS)
_USAGE_GROUP = "|".join(USAGE_GROUPS)
Schema = dict[str, Any]
# The counts of a batch's lines and tokens, as every usage answer has them.
USAGE_PROPERTIES: dict[str, Schema] = {name: {"type": "integer"} for name in USAGE_COUNTS}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(type_name: str, **extra: Any) -> Schema:
    return {"type": [type_name, "null"], **extra}


def obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        **extra,
    }


def json_content(schema: Schema) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def error_response(description: str) -> dict[str, Any]:
    return {"description": description, **json_content(ref("Error"))}


def ok(schema: Schema, description: str = "OK") -> dict[str, Any]:
    return {"description": description, **json_content(schema)}


UNAUTHORIZED = error_response("Missing, unknown or revoked API key.")
NOT_FOUND = error_response("No such object (also: deleted, expired or another key's).")
BAD_REQUEST = error_response("Invalid parameters; `error.param` names the parameter.")


def path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


UNIX_TIME = {"type": "integer", "description": "Unix seconds."}
METADATA = nullable(
    "object",
    maxProperties=MAX_METADATA_PAIRS,
    propertyNames={"maxLength": MAX_METADATA_KEY},
    additionalProperties={"type": "string", "maxLength": MAX_METADATA_VALUE},
)

# A batch's `errors` (and an estimate's): null, or a list object of BatchError.
BATCH_ERRORS: Schema = {
    "anyOf": [
        {"type": "null"},
        obj(
            {
                "object": {"type": "string", "const": "list"},
                "data": {"type": "array", "items": ref("BatchError")},
            }
        ),
    ]
}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": nullable("string"),
                    "code": nullable("string"),
                }
            ),
        }
    ),
    "FileUpload": obj(
        {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"type": "string", "enum": sorted(UPLOAD_PURPOSES)},
            "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
            "expires_after[seconds]": {
                "type": "integer",
                "minimum": MIN_EXPIRES_SECONDS,
                "maximum": MAX_EXPIRES_SECONDS,
            },
        },
        required=["file", "purpose"],
        # The anchor alone names no expiry; the route refuses it (400).
        dependentRequired={"expires_after[anchor]": ["expires_after[seconds]"]},
    ),
    "BatchEstimateModel": obj(
        {
            "model": nullable("string"),
            "provider": nullable("string"),
            "routing_error": nullable("string"),
            "lines": {"type": "integer"},
            "input_characters": {"type": "integer"},
            "estimated_input_tokens": {"type": "integer"},
            "token_source": {"type": "string", "enum": ["learned", "tiktoken", "default"]},
            "max_output_tokens": nullable("integer"),
            "lines_without_max_output_tokens": {"type": "integer"},
            "estimated_input_cost_usd": nullable("number"),
            "max_output_cost_usd": nullable("number"),
            "priced": {"type": "boolean"},
        }
    ),
    "BatchEstimate": obj(
        {
            "object": {"type": "string", "const": "batch.estimate"},
            "input_file_id": {"type": "string"},
            "endpoint": {"type": "string"},
            "valid": {"type": "boolean"},
            "errors": BATCH_ERRORS,
            "total_lines": {"type": "integer"},
            "lines": {"type": "integer"},
            "estimated_input_tokens": {"type": "integer"},
            "max_output_tokens": nullable("integer"),
            "estimated_cost_usd": {"type": "number"},
            "unpriced_models": {"type": "array", "items": {"type": "string"}},
            "models": {"type": "array", "items": ref("BatchEstimateModel")},
        }
    ),
    "ApiKeyList": obj(
        {
            "object": {"type": "string", "const": "list"},
            "data": {"type": "array", "items": ref("ApiKey")},
        }
    ),
    "ProviderList": obj(
        {
            "object": {"type": "string", "const": "list"},
            "data": {"type": "array", "items": ref("Provider")},
        }
    ),
    "Deleted": obj(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "object": {"type": "string"},
            "deleted": {"type": "boolean", "const": True},
        },
        required=["object", "deleted"],
    ),
    # Results as data.
    "UsageCounts": obj(USAGE_PROPERTIES),
    "SummaryGroup": {
        "type": "object",
        "description": "One model's or provider's lines (the key is `model` or `provider`).",
        "properties": {
            "model": nullable("string"),
            "provider": nullable("string"),
            **USAGE_PROPERTIES,
            "latency_ms_p50": nullable("number"),
            "latency_ms_p95": nullable("number"),
            "latency_ms_max": nullable("number"),
            "retries": {"type": "integer", "description": "Attempts beyond the first."},
            "top_errors": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorCount"}},
        },
        "required": ["lines", "succeeded", "failed", "retries", "top_errors"],
    },
    "ErrorCount": obj({"code": nullable("string"), "count": {"type": "integer"}}),
    "BatchSummary": obj(
        {
            "object": {"type": "string", "const": "batch.summary"},
            "batch_id": {"type": "string"},
            "status": {"type": "string", "enum": BATCH_STATUSES},
            "endpoint": {"type": "string"},
            "wall_time_seconds": nullable("integer"),
            "requests_per_second": nullable("number"),
            "lines": {"type": "integer"},
            "succeeded": {"type": "integer"},
            "failed": {"type": "integer"},
            "ran": {"type": "integer", "description": "Lines sent to a provider."},
            "retries": {"type": "integer"},
            "input_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"},
            "cached_tokens": {"type": "integer"},
            "reasoning_tokens": {"type": "integer"},
            "by_model": {"type": "array", "items": ref("SummaryGroup")},
            "by_provider": {"type": "array", "items": ref("SummaryGroup")},
            "errors": {"type": "array", "items": ref("ErrorCount")},
        }
    ),
    "UsageReport": obj(
        {
            "object": {"type": "string", "const": "list"},
            "group_by": {"type": "array", "items": {"type": "string"}},
            "data": {
                "type": "array",
                "items": {
                    "allOf": [ref("UsageCounts")],
                    "properties": {
                        "key": nullable("string"),
                        "model": {"type": "string"},
                        "provider": {"type": "string"},
                        "day": {"type": "string", "description": "UTC date, YYYY-MM-DD."},
                        "batch": {"type": "string"},
                    },
                },
            },
        }
    ),
    "Health": obj(
        {
            "status": {"type": "string", "enum": ["ok", "starting"]},
            "prefect": {"type": "string"},
        },
        required=["status"],
    ),
}
# The bodies and answers that are models, from the models.
SCHEMAS.update(
    component_schemas(
        [*admin_models.REQUESTS, *batch_models.REQUESTS],
        [*admin_models.ANSWERS, *objects.ANSWERS],
    )
)

TIME_PARAM = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_EPOCH_SECONDS},
        {"type": "string", "format": "date"},
    ]
}
FILE_ID = path_param("file_id", "A file id (`file-…`).")
BATCH_ID = path_param("batch_id", "A batch id (`batch_…`).")
AFTER = query_param(
    "after",
    {"type": "string"},
    "Cursor: the page starts right after this id, in the chosen order (a file deleted "
    "since still marks its place). An unknown id is a 404.",
)
ORDER_SCHEMA = {"type": "string", "enum": ["asc", "desc"], "default": "desc"}
ORDER_TEXT = (
    "`asc`: creation order; `desc`: exactly its reverse, objects created in the same "
    "second included."
)

# Admin routes take the admin key (BATCHGATE_ADMIN_KEY), not an API key.
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminAuth": []}]
ADMIN_UNAUTHORIZED = error_response("Missing or wrong admin key.")
OVER_BUDGET = {
    "description": "`insufficient_quota`: the key has spent its budget for the period.",
    "headers": {"x-should-retry": {"schema": {"type": "string", "const": "false"}}},
    **json_content(ref("Error")),
}
NOT_LIVE = {
    "description": "The batch has ended (or is being cancelled).",
    "headers": {"x-should-retry": {"schema": {"type": "string", "const": "false"}}},
    **json_content(ref("Error")),
}

# Each operation the gateway documents, by path and method; the document
# takes those of the routes the app serves (`document`).
OPERATIONS: dict[str, Any] = {
    "/v1/files": {
        "post": {
            "operationId": "createFile",
            "summary": "Upload a file (streamed to disk).",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {**ref("FileUpload")},
                        "encoding": {"file": {"contentType": "application/octet-stream"}},
                    }
                },
            },
            "responses": {
                "200": ok(ref("File")),
                "400": BAD_REQUEST,
                "401": UNAUTHORIZED,
                "413": error_response("The file exceeds the size limit."),
            },
        },
        "get": {
            "operationId": "listFiles",
            "summary": "List the caller's files, newest first by default.",
            "parameters": [
                query_param(
                    "purpose",
                    {"type": "string", "enum": sorted(ALL_PURPOSES)},
                    "Only files with this purpose.",
                ),
                query_param(
                    "limit",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIST_LIMIT,
                        "default": MAX_LIST_LIMIT,
                    },
                    "Page size.",
                ),
                query_param("order", ORDER_SCHEMA, ORDER_TEXT),
                AFTER,
            ],
            "responses": {
                "200": ok(ref("FileList")),
                "400": BAD_REQUEST,
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
    },
    "/v1/files/{file_id}": {
        "parameters": [FILE_ID],
        "get": {
            "operationId": "retrieveFile",
            "summary": "A file's metadata.",
            "responses": {"200": ok(ref("File")), "401": UNAUTHORIZED, "404": NOT_FOUND},
        },
        "delete": {
            "operationId": "deleteFile",
            "summary": "Delete a file: metadata kept as deleted, bytes removed at once.",
            "responses": {"200": ok(ref("FileDeleted")), "401": UNAUTHORIZED, "404": NOT_FOUND},
        },
    },
    "/v1/files/{file_id}/content": {
        "parameters": [FILE_ID],
        "get": {
            "operationId": "downloadFile",
            "summary": "A file's bytes, streamed.",
            "responses": {
                "200": {
                    "description": "The raw bytes.",
                    "content": {
                        "application/jsonl": {"schema": {"type": "string"}},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
    },
    "/v1/batches": {
        "post": {
            "operationId": "createBatch",
            "summary": "Create a batch from an uploaded `batch` file.",
            "requestBody": {"required": True, **json_content(ref("BatchCreate"))},
            "responses": {
                "200": ok(ref("Batch")),
                "400": BAD_REQUEST,
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "429": OVER_BUDGET,
            },
        },
        "get": {
            "operationId": "listBatches",
            "summary": "List the caller's batches, newest first.",
            "parameters": [
                query_param(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    "Page size.",
                ),
                query_param(
                    "order",
                    ORDER_SCHEMA,
                    f"{ORDER_TEXT} An extension: OpenAI's batches list has no `order`.",
                ),
                AFTER,
            ],
            "responses": {
                "200": ok(ref("BatchList")),
                "400": BAD_REQUEST,
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
    },
    "/v1/batches/estimate": {
        "post": {
            "operationId": "estimateBatch",
            "summary": "Dry run: validate a batch file as a batch would and estimate its "
            "tokens and cost, calling no provider. Line errors come back in `errors`, "
            "exactly as the batch would end `failed` with them.",
            "requestBody": {"required": True, **json_content(ref("BatchEstimateRequest"))},
            "responses": {
                "200": ok(ref("BatchEstimate")),
                "400": BAD_REQUEST,
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
    },
    "/v1/batches/{batch_id}": {
        "parameters": [BATCH_ID],
        "get": {
            "operationId": "retrieveBatch",
            "summary": "A batch.",
            "responses": {"200": ok(ref("Batch")), "401": UNAUTHORIZED, "404": NOT_FOUND},
        },
    },
    "/v1/batches/{batch_id}/cancel": {
        "parameters": [BATCH_ID],
        "post": {
            "operationId": "cancelBatch",
            "summary": "Cancel a live batch; it ends `cancelled`, keeping partial results.",
            "responses": {
                "200": ok(ref("Batch")),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": {
                    "description": "The batch is already terminal.",
                    "headers": {"x-should-retry": {"schema": {"type": "string", "const": "false"}}},
                    **json_content(ref("Error")),
                },
            },
        },
    },
    "/admin/keys": {
        "get": {
            "operationId": "adminListKeys",
            "summary": "Every API key with its budget and spend (never the clear key).",
            "security": ADMIN_SECURITY,
            "responses": {"200": ok(ref("ApiKeyList")), "401": ADMIN_UNAUTHORIZED},
        },
        "post": {
            "operationId": "adminCreateKey",
            "summary": "Create an API key, optionally with a token and/or cost budget per "
            "period (`day`, `month`, null: the key's lifetime). The clear key is in this "
            "answer only.",
            "security": ADMIN_SECURITY,
            "requestBody": {"required": True, **json_content(ref("KeyCreate"))},
            "responses": {
                "201": ok(ref("ApiKey"), "Created."),
                "400": BAD_REQUEST,
                "401": ADMIN_UNAUTHORIZED,
                "413": error_response("The request body is too large."),
            },
        },
    },
    "/admin/keys/{key_id}": {
        "parameters": [path_param("key_id", "An API key id.")],
        "delete": {
            "operationId": "adminRevokeKey",
            "summary": "Revoke a key: it authenticates nothing from now on; its files and "
            "batches stay.",
            "security": ADMIN_SECURITY,
            "responses": {
                "200": ok(ref("Deleted")),
                "401": ADMIN_UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
        "patch": {
            "operationId": "adminSetKeyBudget",
            "summary": "Replace a key's budget (no fields or nulls remove it); spend "
            "already counted stays.",
            "security": ADMIN_SECURITY,
            "requestBody": {"required": True, **json_content(ref("KeyBudgetFields"))},
            "responses": {
                "200": ok(ref("ApiKey")),
                "400": BAD_REQUEST,
                "401": ADMIN_UNAUTHORIZED,
                "404": NOT_FOUND,
                "413": error_response("The request body is too large."),
            },
        },
    },
    "/admin/providers": {
        "get": {
            "operationId": "adminListProviders",
            "summary": "The provider connections, their keys masked.",
            "security": ADMIN_SECURITY,
            "responses": {"200": ok(ref("ProviderList")), "401": ADMIN_UNAUTHORIZED},
        },
        "post": {
            "operationId": "adminPutProvider",
            "summary": "Add a provider connection, or replace the one of that name "
            "(201 when new, 200 when replaced). Requests route to it by `name/model` "
            "prefix, by `models`, or as the default.",
            "security": ADMIN_SECURITY,
            "requestBody": {"required": True, **json_content(ref("ProviderCreate"))},
            "responses": {
                "200": ok(ref("Provider"), "Replaced."),
                "201": ok(ref("Provider"), "Created."),
                "400": BAD_REQUEST,
                "401": ADMIN_UNAUTHORIZED,
                "413": error_response("The request body is too large."),
            },
        },
    },
    "/admin/providers/{name}": {
        "parameters": [path_param("name", "A provider connection's name.")],
        "delete": {
            "operationId": "adminDeleteProvider",
            "summary": "Remove a provider connection; running batches keep the list they "
            "started with.",
            "security": ADMIN_SECURITY,
            "responses": {
                "200": ok(ref("Deleted")),
                "401": ADMIN_UNAUTHORIZED,
                "404": NOT_FOUND,
            },
        },
        "patch": {
            "operationId": "adminSetProviderConcurrency",
            "summary": "Change a provider's `max_concurrency`; running batches take the "
            "new ceiling within one heartbeat.",
            "security": ADMIN_SECURITY,
            "requestBody": {"required": True, **json_content(ref("ProviderConcurrency"))},
            "responses": {
                "200": ok(ref("Provider")),
                "400": BAD_REQUEST,
                "401": ADMIN_UNAUTHORIZED,
                "404": NOT_FOUND,
                "413": error_response("The request body is too large."),
            },
        },
    },
    "/admin/batches/{batch_id}/pause": {
        "parameters": [BATCH_ID],
        "post": {
            "operationId": "adminPauseBatch",
            "summary": "Pause a live batch: no new upstream requests within one heartbeat; "
            "it keeps its lease and status.",
            "security": ADMIN_SECURITY,
            "responses": {
                "200": ok(ref("BatchControl")),
                "401": ADMIN_UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": NOT_LIVE,
            },
        },
    },
    "/admin/batches/{batch_id}/resume": {
        "parameters": [BATCH_ID],
        "post": {
            "operationId": "adminResumeBatch",
            "summary": "Resume a paused batch where it stopped; a batch whose flow run was "
            "suspended in the Prefect UI has that run resumed.",
            "security": ADMIN_SECURITY,
            "responses": {
                "200": ok(ref("BatchControl")),
                "401": ADMIN_UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": NOT_LIVE,
                "503": error_response(
                    "Prefect could not be asked whether the batch's run is suspended "
                    "(`prefect_unavailable`); the pause flag is cleared, try again."
                ),
            },
        },
    },
    "/v1/batches/{batch_id}/results": {
        "parameters": [BATCH_ID],
        "get": {
            "operationId": "batchResults",
            "summary": "The batch's results as data (an extension). Without `format`: the "
            "output and error lines of every chunk finished so far, as JSONL in OpenAI's "
            "line format, in any status; pass the `batchgate-next-cursor` header back as "
            "`after` to get only what is new. `format=parquet|csv`: the results table of an "
            "ended batch, one row per input line.",
            "parameters": [
                query_param(
                    "after",
                    {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    "Cursor from the `batchgate-next-cursor` header of the previous answer.",
                ),
                query_param(
                    "kind",
                    {"type": "string", "enum": list(live_results.KINDS)},
                    "Only output lines or only error lines (JSONL only).",
                ),
                query_param(
                    "format",
                    {"type": "string", "enum": ["jsonl", *RESULT_FORMATS], "default": "jsonl"},
                    "`parquet` / `csv`: the results table (CSV holds `embedding` as JSON text).",
                ),
            ],
            "responses": {
                "200": {
                    "description": "JSONL lines, or the table.",
                    "headers": {
                        "batchgate-next-cursor": {"schema": {"type": "string"}},
                        "batchgate-results-complete": {
                            "schema": {"type": "string", "enum": ["true", "false"]}
                        },
                    },
                    "content": {
                        "application/jsonl": {"schema": {"type": "string"}},
                        "application/vnd.apache.parquet": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "400": BAD_REQUEST,
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": error_response(
                    "A table was asked for a batch that has not ended (`batch_not_finished`)."
                ),
            },
        },
    },
    "/v1/batches/{batch_id}/summary": {
        "parameters": [BATCH_ID],
        "get": {
            "operationId": "batchSummary",
            "summary": "An ended batch's analytics per model and per provider (an extension).",
            "responses": {
                "200": ok(ref("BatchSummary")),
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": error_response("The batch has not ended."),
            },
        },
    },
    "/v1/batches/{batch_id}/retry": {
        "parameters": [BATCH_ID],
        "post": {
            "operationId": "retryBatchFailures",
            "summary": "A new batch of exactly the failed lines of an ended batch, with "
            "`metadata.batchgate_parent_batch_id` (an extension).",
            "parameters": [
                query_param(
                    "codes",
                    {"type": "string", "maxLength": MAX_CODES_CHARS},
                    "Only lines with one of these comma-separated error codes or HTTP "
                    "statuses, e.g. `429,500,batch_expired`.",
                )
            ],
            "responses": {
                "200": ok(ref("Batch")),
                "400": BAD_REQUEST,
                "401": UNAUTHORIZED,
                "404": NOT_FOUND,
                "409": error_response(
                    "The batch has not ended (`batch_not_finished`), has no failed lines "
                    "with those codes (`no_failed_lines`), or its input file is gone "
                    "(`input_file_unavailable`)."
                ),
                "429": OVER_BUDGET,
            },
        },
    },
    "/admin/usage": {
        "get": {
            "operationId": "adminUsage",
            "summary": "Line counts and token totals over the batches' recorded per-model "
            "usage (admin key).",
            "security": ADMIN_SECURITY,
            "parameters": [
                query_param(
                    "group_by",
                    {
                        "type": "string",
                        "pattern": f"^(({_USAGE_GROUP})(,({_USAGE_GROUP}))*)?$",
                    },
                    f"Comma-separated: any of {', '.join(USAGE_GROUPS)} (day: UTC).",
                ),
                query_param("since", TIME_PARAM, "Epoch seconds or ISO 8601 date (inclusive)."),
                query_param("until", TIME_PARAM, "Epoch seconds or ISO 8601 date (exclusive)."),
            ],
            "responses": {
                "200": ok(ref("UsageReport")),
                "400": BAD_REQUEST,
                "401": ADMIN_UNAUTHORIZED,
            },
        },
    },
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Readiness: 200 once batch flow runs can be created.",
            "security": [],
            "responses": {
                "200": ok(ref("Health")),
                "503": ok(
                    ref("Health"),
                    "Starting: Prefect is not reachable yet, or the process-batch "
                    "deployment is not registered yet.",
                ),
            },
        },
    },
}


# -- webhooks and metrics (admin key; /metrics also a read-only metrics token) --

WEBHOOK_EVENT_TYPES = EVENT_TYPES
SCHEMAS.update(
    {
        "WebhookEndpointList": obj(
            {
                "object": {"type": "string", "const": "list"},
                "data": {"type": "array", "items": ref("WebhookEndpoint")},
            }
        ),
        "WebhookEndpointDeleted": obj(
            {
                "id": {"type": "string"},
                "object": {"type": "string", "const": "webhook_endpoint"},
                "deleted": {"type": "boolean", "const": True},
            }
        ),
        **component_schemas(webhook_models.REQUESTS, webhook_models.ANSWERS),
    }
)
OPERATIONS.update(
    {
        "/admin/webhooks": {
            "post": {
                "operationId": "createWebhookEndpoint",
                "security": ADMIN_SECURITY,
                "summary": "Register a webhook endpoint; the answer holds its signing secret "
                "(once). Events are OpenAI's batch events, signed per Standard Webhooks.",
                "requestBody": {"required": True, **json_content(ref("WebhookEndpointCreate"))},
                "responses": {
                    "201": ok(ref("WebhookEndpointCreated"), "Created"),
                    "400": BAD_REQUEST,
                    "401": ADMIN_UNAUTHORIZED,
                    "404": error_response("`key_id` names no API key."),
                },
            },
            "get": {
                "operationId": "listWebhookEndpoints",
                "security": ADMIN_SECURITY,
                "summary": "The registered webhook endpoints (without their secrets).",
                "responses": {"200": ok(ref("WebhookEndpointList")), "401": ADMIN_UNAUTHORIZED},
            },
        },
        "/admin/webhooks/{webhook_id}": {
            "parameters": [path_param("webhook_id", "A webhook endpoint id (`we_…`).")],
            "delete": {
                "operationId": "deleteWebhookEndpoint",
                "security": ADMIN_SECURITY,
                "summary": "Stop an endpoint; its undelivered events are dropped.",
                "responses": {
                    "200": ok(ref("WebhookEndpointDeleted")),
                    "401": ADMIN_UNAUTHORIZED,
                    "404": NOT_FOUND,
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "security": [{"adminAuth": []}, {"metricsToken": []}],
                "summary": "Prometheus metrics (text format). Admin key or the metrics token.",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": ADMIN_UNAUTHORIZED,
                },
            },
        },
    }
)


# Served but not documented: the workers' internal API and this document.
UNDOCUMENTED_PREFIXES = ("/internal/", "/openapi.json")


class UndocumentedRoute(LookupError):
    """A route the app serves has no operation here: add one to OPERATIONS."""


def paths_of(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The document's paths, one operation per method of each route the app
    serves, so the document lists exactly what is served."""
    paths: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route) or route.path.startswith(UNDOCUMENTED_PREFIXES):
            continue
        item = OPERATIONS.get(route.path, {})
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            if method.lower() not in item:
                raise UndocumentedRoute(f"{method} {route.path}")
            paths.setdefault(route.path, {})[method.lower()] = item[method.lower()]
        if "parameters" in item:
            paths[route.path]["parameters"] = item["parameters"]
    return paths


def document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of the app whose routes are `routes`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchgate",
            "version": "0.1.0",
            "description": "An OpenAI-compatible Files and Batches API.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths_of(routes),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "adminAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin key (BATCHGATE_ADMIN_KEY, else the one generated "
                    "into <data_dir>/admin_key).",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The read-only metrics token (BATCHGATE_METRICS_TOKEN), "
                    "if one is configured: it reads /metrics and nothing else.",
                },
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    """Built from the serving app's routes on first ask, then kept."""
    state = request.app.state
    if getattr(state, "openapi_document", None) is None:
        state.openapi_document = document(request.app.routes)
    return JSONResponse(state.openapi_document)


routes: list[Route] = [Route("/openapi.json", openapi_json, methods=["GET"])]
