"""The admin API's bodies and answers: API keys with their budgets,
provider connections, a batch's pause switch. The limits here are the ones
the routes enforce and /openapi.json states."""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import AfterValidator, Field
from typing_extensions import TypedDict

from gateway.models.body import WHOLE_NUMBER, Body, Expect, rule_error
from storage.records import BatchStatus, BudgetPeriod

MAX_NAME_CHARS = 200
MAX_TOKENS_LIMIT = 10**15
MAX_COST_LIMIT = 1e9
MIN_CONCURRENCY, MAX_CONCURRENCY = 1, 10_000
DEFAULT_CONCURRENCY = 64


def _name_text(param: str) -> Expect:
    return Expect(
        f"Invalid '{param}': expected a non-empty string of at most {MAX_NAME_CHARS} characters."
    )


def _stripped(value: str) -> str:
    return value.strip()


def _no_slash(value: str) -> str:
    if "/" in value:
        raise rule_error(
            "Invalid 'name': a provider name cannot contain '/' (it prefixes "
            "model names as 'provider/model')."
        )
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise rule_error("Invalid 'base_url': expected an http(s) URL.")
    return value


# A name: some non-space text, at most MAX_NAME_CHARS long before stripping.
NameText = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"\S"), AfterValidator(_stripped)
]
Concurrency = Annotated[int, Field(ge=MIN_CONCURRENCY, le=MAX_CONCURRENCY), WHOLE_NUMBER]
CONCURRENCY_TEXT = Expect(
    f"Invalid 'max_concurrency': expected an integer from {MIN_CONCURRENCY} to {MAX_CONCURRENCY}.",
    type_message="Invalid 'max_concurrency': expected int.",
)


class KeyBudgetFields(Body):
    """A key's budget: all three fields replace the one before; none (or
    nulls) removes it."""

    max_tokens: Annotated[
        Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT), WHOLE_NUMBER] | None,
        Expect(
            f"Invalid 'max_tokens': expected an integer from 1 to {MAX_TOKENS_LIMIT}, or null.",
            type_message="Invalid 'max_tokens': expected int.",
        ),
    ] = None
    max_cost_usd: Annotated[
        Annotated[float, Field(gt=0, le=MAX_COST_LIMIT)] | None,
        Expect(
            "Invalid 'max_cost_usd': expected a number above 0 and at most "
            f"{MAX_COST_LIMIT:g}, or null."
        ),
    ] = None
    budget_period: Annotated[
        BudgetPeriod | None, Expect("Invalid 'budget_period': expected 'day', 'month' or null.")
    ] = None


class KeyName(Body):
    name: Annotated[NameText, _name_text("name")]


class KeyCreate(KeyBudgetFields, KeyName):
    """POST /admin/keys: a name, and optionally a budget."""


class ProviderCreate(Body):
    """POST /admin/providers: a connection, created or replaced by name."""

    name: Annotated[
        NameText,
        AfterValidator(_no_slash),
        Field(json_schema_extra={"pattern": r"^[^/]*\S[^/]*$"}),
        _name_text("name"),
    ]
    base_url: Annotated[
        NameText,
        AfterValidator(_http_url),
        Field(json_schema_extra={"pattern": "^https?://"}),
        _name_text("base_url"),
    ]
    api_key: Annotated[str | None, Expect("Invalid 'api_key': expected str.")] = ""
    is_active: Annotated[bool | None, Expect("Invalid 'is_active': expected bool.")] = True
    max_concurrency: Annotated[Concurrency, CONCURRENCY_TEXT] = DEFAULT_CONCURRENCY
    models: Annotated[
        list[Annotated[str, Field(min_length=1)]] | None,
        Expect(
            "Invalid 'models': expected a list of model names.",
            type_message="Invalid 'models': expected list.",
        ),
    ] = None
    default: Annotated[bool | None, Expect("Invalid 'default': expected bool.")] = False


class ProviderConcurrency(Body):
    """PATCH /admin/providers/{name}: the provider's live concurrency ceiling."""

    max_concurrency: Annotated[Concurrency, CONCURRENCY_TEXT]


# -- answers ----------------------------------------------------------------


class KeyBudget(TypedDict):
    """A key's budget and its spend in the current period."""

    max_tokens: int | None
    max_cost_usd: float | None
    budget_period: BudgetPeriod | None
    period_start: Annotated[int, Field(description="Unix seconds; 0: no period.")]
    spent_tokens: int
    spent_cost_usd: float
    exceeded: bool


class ApiKey(TypedDict):
    id: str
    object: Literal["api_key"]
    name: str
    created_at: Annotated[int, Field(description="Unix seconds.")]
    budget: KeyBudget | None
    key: NotRequired[Annotated[str, Field(description="The clear key: in the create answer only.")]]


class Provider(TypedDict):
    name: str
    object: Literal["provider"]
    base_url: str
    api_key: Annotated[str, Field(description="Masked.")]
    is_active: bool
    max_concurrency: int
    models: list[str] | None
    default: bool
    created_at: Annotated[int, Field(description="Unix seconds.")]


class BatchControl(TypedDict):
    id: str
    object: Literal["batch.control"]
    status: BatchStatus
    paused: bool


REQUESTS = (KeyBudgetFields, KeyCreate, ProviderCreate, ProviderConcurrency)
ANSWERS = (KeyBudget, ApiKey, Provider, BatchControl)
