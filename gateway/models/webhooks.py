"""The webhook endpoints' bodies and answers (admin API)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from typing_extensions import TypedDict

from gateway.models.body import Body, Expect
from tasks.webhooks import EVENT_TYPES, WebhookEvent

MAX_URL_CHARS = 2000
# The same rule as the document's pattern, so a URL it calls valid is taken.
URL_PATTERN = r"^https?://\S+$"


def _unique_sorted(events: list[WebhookEvent]) -> list[WebhookEvent]:
    return sorted(set(events))


class WebhookEndpointCreate(Body):
    """POST /admin/webhooks: where to send which of OpenAI's batch events."""

    url: Annotated[
        str,
        Field(max_length=MAX_URL_CHARS, pattern=URL_PATTERN),
        Expect(f"Invalid 'url': expected an http(s) URL of at most {MAX_URL_CHARS} characters."),
    ]
    events: Annotated[
        list[WebhookEvent] | None,
        Field(min_length=1, description="Default: all four batch events."),
        AfterValidator(lambda events: None if events is None else _unique_sorted(events)),
        Expect(f"Invalid 'events': expected a non-empty list of {', '.join(EVENT_TYPES)}."),
    ] = None
    key_id: Annotated[
        str | None,
        Field(description="Only this API key's batches; null or absent: all."),
        Expect("Invalid 'key_id': expected an API key id or null."),
    ] = None


class WebhookEndpoint(TypedDict):
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    events: list[WebhookEvent]
    key_id: Annotated[
        str | None, Field(description="null: a global endpoint (every key's batches).")
    ]
    created_at: Annotated[int, Field(description="Unix seconds.")]


class WebhookEndpointCreated(WebhookEndpoint):
    secret: Annotated[
        str,
        Field(
            pattern="^whsec_", description="The Standard Webhooks signing secret; shown only here."
        ),
    ]


REQUESTS = (WebhookEndpointCreate,)
ANSWERS = (WebhookEndpoint, WebhookEndpointCreated)
