"""Where `batchgate run` sends requests: provider records from its flags,
the `BATCHGATE_CONFIG` file, or the OpenAI environment variables.

The records live in memory only: a run never stores an API key in its state
directory, and error messages name variables, never values.
"""

from __future__ import annotations

from typing import Any

from storage.records import ProviderRecord
from tasks.settings import Settings

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


class RunError(Exception):
    """A problem with the command itself (flags, providers, state): exit 2."""


def resolve_providers(
    settings: Settings,
    environ: dict[str, str],
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    provider: str | None = None,
    max_concurrency: int | None = None,
) -> list[ProviderRecord]:
    """Where requests go: `--base-url`/`--api-key-env`, else `--provider` (or
    every provider) from the `BATCHGATE_CONFIG` file, else OPENAI_BASE_URL /
    OPENAI_API_KEY. Error messages name variables, never key values."""

    def key_from(var: str) -> str:
        if var not in environ:
            raise RunError(f"--api-key-env {var}: the environment variable {var} is not set")
        return environ[var]

    if base_url is not None or api_key_env is not None:
        if provider is not None:
            raise RunError("give either --base-url/--api-key-env or --provider, not both")
        records = [
            ProviderRecord(
                name="default",
                base_url=base_url or environ.get("OPENAI_BASE_URL", DEFAULT_OPENAI_URL),
                api_key=key_from(api_key_env) if api_key_env else environ.get("OPENAI_API_KEY", ""),
                is_default=True,
            )
        ]
    elif settings.providers:
        names = [p.name for p in settings.providers]
        if provider is not None and provider not in names:
            raise RunError(
                f"--provider {provider}: not in BATCHGATE_CONFIG (has: {', '.join(names)})"
            )
        records = [
            ProviderRecord(
                name=p.name,
                base_url=p.base_url,
                api_key=p.api_key,
                is_active=p.is_active,
                max_concurrency=p.max_concurrency,
                models=p.models,
                is_default=(p.name == provider) if provider is not None else p.default,
            )
            for p in settings.providers
        ]
    elif provider is not None:
        raise RunError(f"--provider {provider}: no providers in BATCHGATE_CONFIG")
    else:
        if "OPENAI_API_KEY" not in environ and "OPENAI_BASE_URL" not in environ:
            raise RunError(
                "no provider: pass --base-url URL [--api-key-env VAR], --provider NAME "
                "(from BATCHGATE_CONFIG), or set OPENAI_API_KEY / OPENAI_BASE_URL"
            )
        records = [
            ProviderRecord(
                name="openai",
                base_url=environ.get("OPENAI_BASE_URL", DEFAULT_OPENAI_URL),
                api_key=environ.get("OPENAI_API_KEY", ""),
                is_default=True,
            )
        ]
    if max_concurrency is not None:
        records = [_with(p, max_concurrency=max_concurrency) for p in records]
    return records


def _with(record: ProviderRecord, **fields: Any) -> ProviderRecord:
    return ProviderRecord(**{**record.__dict__, **fields})
