"""Request bodies as pydantic models, and their errors in OpenAI's words.

Every body model forbids fields it does not know, as OpenAI answers
"Unrecognized request argument supplied": a misspelled setting is refused,
not silently dropped. Models are strict (no "8" for 8) except that JSON's one
number type makes 8.0 the integer 8 (`WholeNumber`), as JSON Schema says.

`parse` turns pydantic's first error into the `APIError` the route raises:
an unknown field, a missing one, or the field's own `Expect` message, so the
messages and `param` names stay those clients already see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from gateway.errors import APIError, bad_request

# The error type of a rule a validator of ours checks; its message is the answer.
RULE_ERROR = "batchgate_rule"


class Body(BaseModel):
    """A request body: unknown fields refused, types strict."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class Expect:
    """The answer when a field's value is wrong (as `Annotated` metadata)."""

    message: str  # "{value}" in it: the value given
    code: str | None = "invalid_value"
    # For a value of the wrong JSON type (not null), where that reads better.
    type_message: str | None = None


def rule_error(message: str, code: str | None = "invalid_value") -> PydanticCustomError:
    """Raised by a field's own validator: `message` is the client's answer."""
    return PydanticCustomError(RULE_ERROR, "{message}", {"message": message, "code": code})


def _whole_number(value: Any) -> Any:
    """8.0 is the integer 8 in JSON; true and "8" stay what they are (refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# After an int's own constraints: Annotated[int, Field(ge=1), WHOLE_NUMBER]
# (placed before them, the constraints would not reach the JSON schema).
WHOLE_NUMBER = BeforeValidator(_whole_number)

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: object) -> M:
    """`body` as `model`, or the APIError (400) naming the first problem."""
    if not isinstance(body, Mapping):
        raise bad_request("The request body must be a JSON object.", param="body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise body_error(model, exc.errors(include_url=False)) from None


def body_error(model: type[BaseModel], errors: list[ErrorDetails]) -> APIError:
    """The one error a client is told: an unknown field before anything else
    (the likely cause of the rest), then the first in field order."""
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # The field's name (a list's index is not a parameter: `models`, not `models.0`).
    loc = [part for part in first["loc"] if isinstance(part, str)]
    param = ".".join(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        return bad_request(
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    if kind == "missing":
        return bad_request(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind == RULE_ERROR:
        return bad_request(first["msg"], param=param, code=(first.get("ctx") or {}).get("code"))
    found = _expectation(model, loc)
    if found is None:
        return bad_request(f"Invalid '{param}': {first['msg']}.", param=param, code="invalid_value")
    expect, depth = found
    given = first["input"]
    # A value of another JSON type (a number where a name is expected), not null.
    wrong_type = (
        kind.endswith("_type") or (kind == "literal_error" and not isinstance(given, str))
    ) and given is not None
    message = expect.type_message if wrong_type and depth == len(loc) else None
    text = (message or expect.message).replace("{value}", str(given))
    return bad_request(text, param=param, code=expect.code)


def _expectation(model: type[BaseModel], loc: list[str]) -> tuple[Expect, int] | None:
    """The `Expect` of the deepest field named by `loc`, through nested
    models, and how many parts of `loc` it takes."""
    field: FieldInfo | None = None
    depth = 0
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            break
        field = current.model_fields.get(part)
        if field is None:
            break
        depth += 1
        current = field.annotation
        for candidate in getattr(current, "__args__", ()):  # X | None: the model in it
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
    expect = (
        None if field is None else next((m for m in field.metadata if isinstance(m, Expect)), None)
    )
    return None if expect is None else (expect, depth)
