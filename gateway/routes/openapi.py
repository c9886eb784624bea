"""GET /openapi.json: the OpenAPI 3.1 document of the public routes.

Written out from small dicts rather than generated from handlers: the
handlers parse requests by hand (streaming uploads), so there is nothing
to introspect, and a written document states the contract plainly. It is
fuzzed with schemathesis, so every status a route can answer is listed and
nullable fields use type arrays.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.routes.files import (
    ALL_PURPOSES,
    MAX_EXPIRES_SECONDS,
    MAX_LIST_LIMIT,
    MIN_EXPIRES_SECONDS,
    UPLOAD_PURPOSES,
)
from tasks.webhooks import EVENT_TYPES

BATCH_ENDPOINTS = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/responses",
    "/v1/moderations",
]
BATCH_STATUSES = [
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
Schema = dict[str, Any]


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
    maxProperties=16,
    propertyNames={"maxLength": 64},
    additionalProperties={"type": "string", "maxLength": 512},
)

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
    "File": obj(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "const": "file"},
            "bytes": {"type": "integer", "minimum": 0},
            "created_at": UNIX_TIME,
            "filename": {"type": "string"},
            "purpose": {"type": "string", "enum": sorted(ALL_PURPOSES)},
            "expires_at": nullable("integer", description="Unix seconds; null: never expires."),
        },
        additionalProperties=False,
    ),
    "FileList": obj(
        {
            "object": {"type": "string", "const": "list"},
            "data": {"type": "array", "items": ref("File")},
            "first_id": nullable("string"),
            "last_id": nullable("string"),
            "has_more": {"type": "boolean"},
        }
    ),
    "FileDeleted": obj(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "const": "file"},
            "deleted": {"type": "boolean", "const": True},
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
    "BatchError": obj(
        {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "param": nullable("string"),
            "line": nullable("integer"),
        },
        required=["code", "message"],
    ),
    "BatchUsage": obj(
        {
            "input_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
            "input_tokens_details": obj({"cached_tokens": {"type": "integer"}}),
            "output_tokens_details": obj({"reasoning_tokens": {"type": "integer"}}),
        }
    ),
    "Batch": obj(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "const": "batch"},
            "endpoint": {"type": "string"},
            "errors": {
                "anyOf": [
                    {"type": "null"},
                    obj(
                        {
                            "object": {"type": "string", "const": "list"},
                            "data": {"type": "array", "items": ref("BatchError")},
                        }
                    ),
                ]
            },
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {"type": "string", "enum": BATCH_STATUSES},
            "output_file_id": nullable("string"),
            "error_file_id": nullable("string"),
            "created_at": UNIX_TIME,
            "in_progress_at": nullable("integer"),
            "expires_at": nullable("integer"),
            "finalizing_at": nullable("integer"),
            "completed_at": nullable("integer"),
            "failed_at": nullable("integer"),
            "expired_at": nullable("integer"),
            "cancelling_at": nullable("integer"),
            "cancelled_at": nullable("integer"),
            "request_counts": obj(
                {
                    "total": {"type": "integer"},
                    "completed": {"type": "integer"},
                    "failed": {"type": "integer"},
                }
            ),
            "metadata": METADATA,
            "model": nullable("string"),
            "usage": {"anyOf": [{"type": "null"}, ref("BatchUsage")]},
        }
    ),
    "BatchList": obj(
        {
            "object": {"type": "string", "const": "list"},
            "data": {"type": "array", "items": ref("Batch")},
            "first_id": nullable("string"),
            "last_id": nullable("string"),
            "has_more": {"type": "boolean"},
        }
    ),
    "BatchCreate": obj(
        {
            "input_file_id": {"type": "string", "minLength": 1},
            "endpoint": {"type": "string", "enum": BATCH_ENDPOINTS},
            "completion_window": {"type": "string", "enum": ["24h"]},
            "metadata": METADATA,
            "output_expires_after": obj(
                {
                    "anchor": {"type": "string", "enum": ["created_at"]},
                    "seconds": {
                        "type": "integer",
                        "minimum": MIN_EXPIRES_SECONDS,
                        "maximum": MAX_EXPIRES_SECONDS,
                    },
                }
            ),
        },
        required=["input_file_id", "endpoint", "completion_window"],
    ),
    "Health": obj(
        {
            "status": {"type": "string", "enum": ["ok", "starting"]},
            "prefect": {"type": "string"},
        },
        required=["status"],
    ),
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

PATHS: dict[str, Any] = {
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
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Readiness: 200 once batch flow runs can be created.",
            "security": [],
            "responses": {
                "200": ok(ref("Health")),
                "503": ok(ref("Health"), "Starting: Prefect is not reachable yet."),
            },
        },
    },
}


# -- webhooks and metrics (admin key; /metrics also a read-only metrics token) --

WEBHOOK_EVENT_TYPES = EVENT_TYPES
ADMIN_ONLY = error_response("Missing or wrong admin key.")
WEBHOOK_ENDPOINT = {
    "id": {"type": "string"},
    "object": {"type": "string", "const": "webhook_endpoint"},
    "url": {"type": "string"},
    "events": {"type": "array", "items": {"type": "string", "enum": WEBHOOK_EVENT_TYPES}},
    "key_id": nullable("string", description="null: a global endpoint (every key's batches)."),
    "created_at": UNIX_TIME,
}
SCHEMAS.update(
    {
        "WebhookEndpoint": obj(WEBHOOK_ENDPOINT),
        "WebhookEndpointCreated": obj(
            {
                **WEBHOOK_ENDPOINT,
                "secret": {
                    "type": "string",
                    "pattern": "^whsec_",
                    "description": "The Standard Webhooks signing secret; shown only here.",
                },
            }
        ),
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
        "WebhookEndpointCreate": obj(
            {
                "url": {"type": "string", "pattern": "^https?://\\S+$", "maxLength": 2000},
                "events": {
                    "type": "array",
                    "items": {"type": "string", "enum": WEBHOOK_EVENT_TYPES},
                    "minItems": 1,
                    "description": "Default: all four batch events.",
                },
                "key_id": nullable(
                    "string", description="Only this API key's batches; null or absent: all."
                ),
            },
            required=["url"],
        ),
    }
)
PATHS.update(
    {
        "/admin/webhooks": {
            "post": {
                "operationId": "createWebhookEndpoint",
                "summary": "Register a webhook endpoint; the answer holds its signing secret "
                "(once). Events are OpenAI's batch events, signed per Standard Webhooks.",
                "requestBody": {"required": True, **json_content(ref("WebhookEndpointCreate"))},
                "responses": {
                    "201": ok(ref("WebhookEndpointCreated"), "Created"),
                    "400": BAD_REQUEST,
                    "401": ADMIN_ONLY,
                    "404": error_response("`key_id` names no API key."),
                },
            },
            "get": {
                "operationId": "listWebhookEndpoints",
                "summary": "The registered webhook endpoints (without their secrets).",
                "responses": {"200": ok(ref("WebhookEndpointList")), "401": ADMIN_ONLY},
            },
        },
        "/admin/webhooks/{webhook_id}": {
            "parameters": [path_param("webhook_id", "A webhook endpoint id (`we_…`).")],
            "delete": {
                "operationId": "deleteWebhookEndpoint",
                "summary": "Stop an endpoint; its undelivered events are dropped.",
                "responses": {
                    "200": ok(ref("WebhookEndpointDeleted")),
                    "401": ADMIN_ONLY,
                    "404": NOT_FOUND,
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format). Admin key or the metrics token.",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": ADMIN_ONLY,
                },
            },
        },
    }
)


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchgate",
            "version": "0.1.0",
            "description": "An OpenAI-compatible Files and Batches API.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


DOCUMENT = build_document()


async def openapi_json(request: Request) -> Response:
    return JSONResponse(DOCUMENT)


routes: list[Route] = [Route("/openapi.json", openapi_json, methods=["GET"])]
