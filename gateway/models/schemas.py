"""`components.schemas` of /openapi.json, generated from the models.

Request models are described as they validate, answers as they serialize;
each becomes a component named after its class. Titles of single fields are
left out: the field's name says it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import CoreSchema

REF_TEMPLATE = "#/components/schemas/{model}"


class _Untitled(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def component_schemas(requests: Iterable[type], answers: Iterable[type]) -> dict[str, Any]:
    """Every model's schema and those it refers to, keyed by class name."""
    inputs: list[tuple[type, JsonSchemaMode, TypeAdapter[Any]]] = [
        *((t, "validation", TypeAdapter(t)) for t in requests),
        *((t, "serialization", TypeAdapter(t)) for t in answers),
    ]
    _, top = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE, schema_generator=_Untitled)
    return dict(top.get("$defs", {}))
