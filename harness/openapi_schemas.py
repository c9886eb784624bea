"""The gateway's OpenAPI document, built from its routes, and a check of an
answer against one of its components: what the tests hold answers to."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.app import ROUTES
from gateway.routes.openapi import document

DOCUMENT = document(ROUTES)
REGISTRY = Registry().with_resource(
    "urn:openapi", Resource(contents=DOCUMENT, specification=DRAFT202012)
)


def schema_errors(name: str, instance: Any) -> list[str]:
    """Why `instance` is not a valid `name` of the document (empty: it is)."""
    validator = Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=REGISTRY
    )
    return [e.message for e in validator.iter_errors(instance)]
