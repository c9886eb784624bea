"""The public JSON bodies as typed models: what each route accepts
(request models, validated by pydantic) and what it answers (TypedDicts, so
building an answer costs no more than a dict). Validation, serialization
and the `components.schemas` of /openapi.json come from them."""
