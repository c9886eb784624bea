"""All of batchgate's settings in one typed object, read once at start-up.

It lives in `tasks/` because the gateway, the flows and the tasks all read it
and imports point one way (gateway -> flows -> tasks -> storage).

Sources, highest priority first: keyword arguments (tests), `BATCHGATE_*`
environment variables, the TOML file named by `BATCHGATE_CONFIG`, defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ProviderConfig(BaseModel):
    """A provider connection declared in the config file."""

    name: str
    base_url: str
    api_key: str = ""
    is_active: bool = True
    max_concurrency: int = 64
    models: list[str] | None = None
    default: bool = False


class PriceConfig(BaseModel):
    """A `[[prices]]` entry of the config file: US dollars per million tokens
    of one model (budgets and estimates, `tasks/budgets.py`). Cached input
    costs the input price when `cached_input_per_million` is not given."""

    model: str
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(default=None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    prefect_port: int = 4200
    data_dir: Path = Path("./.batchgate")
    max_file_bytes: int = 200_000_000
    admin_key: str | None = None
    internal_token: str | None = None
    # Fernet key that encrypts provider keys at rest (storage/secrets.py); when
    # unset, <data_dir>/secret_key, generated on first start. The new one is
    # read by `batchgate rotate-secret-key` only, when the key comes from here.
    secret_key: str | None = None
    new_secret_key: str | None = None
    gateway_url: str | None = None
    cors_origins: list[str] = Field(default_factory=list)
    providers: list[ProviderConfig] = Field(default_factory=list)
    prices: list[PriceConfig] = Field(default_factory=list)

    # Batches
    chunk_size: int = 1000
    chunk_parallelism: int = 2
    # Flow runs that may work one batch of several chunks at once: its own
    # run and up to fanout_runs - 1 helper runs (`process-chunks`), which any
    # worker on any host picks up, each with its own provider concurrency.
    # Read by the gateway, which tells the batch's run at claim; 1: one run.
    fanout_runs: int = Field(default=1, ge=1)
    max_batch_lines: int = 50_000
    completion_window_seconds: int = 24 * 3600
    batch_file_ttl_seconds: int = 30 * 24 * 3600
    # A dead run's batch waits for its lease to lapse and the next reconciler
    # pass: 30 + 5 s keeps a SIGKILLed runner's batch under a minute
    # (docs/reliability.md, `batchgate up` kills; 60 + 10 s took 81-87 s).
    lease_seconds: int = 30
    reconcile_interval_seconds: float = 5.0
    # How often a run renews its lease and reads its batch's control state
    # (cancel, pause, budget stop, concurrency ceilings): those take effect
    # within one heartbeat. None: a quarter of the lease, 0.5 to 5 s (5 s at
    # the default lease of 30 s).
    heartbeat_seconds: float | None = Field(default=None, gt=0)
    retention_interval_seconds: int = 3600
    runner_limit: int = 8  # flow runs one `batchgate up` runner executes at once
    # CPU niceness of flow runs: raise it on a small shared machine to let the API
    # answer first, at some batch throughput when CPU is short (docs/reliability.md).
    flow_run_nice: int = Field(default=0, ge=0, le=19)

    # Upstream calls
    request_timeout_seconds: float = 600.0
    max_attempts: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0

    # Webhooks (gateway/loops/webhooks.py): attempt n waits base * 2**(n-1)
    # seconds, at most max; after `webhook_max_attempts` the delivery is given
    # up (the defaults span about 8.4 hours). Tests shorten them.
    webhook_poll_seconds: float = 1.0
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = Field(default=18, ge=1)
    webhook_backoff_base_seconds: float = 5.0
    webhook_backoff_max_seconds: float = 3600.0

    # Metrics: GET /metrics takes the admin key, or this read-only token when set.
    metrics_token: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("BATCHGATE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "batchgate.duckdb"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def public_url(self) -> str:
        """The URL workers use to reach the gateway's internal API."""
        return self.gateway_url or f"http://{self.host}:{self.port}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings once; callers pass the object down instead of re-reading."""
    return Settings(**overrides)
