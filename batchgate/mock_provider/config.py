"""The fake provider's settings (`MockConfig`) and its command-line flags.

Apart from batchgate/mock_provider/server.py, so that building `batchgate`'s command
line (every subcommand's flags) does not import Starlette and the mock's
app: `batchgate run` starts ~0.15 s sooner.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass
class MockConfig:
    """How the fake provider behaves; every field can change at run time."""

    host: str = "127.0.0.1"
    port: int = 9000
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    failure_rate: float = 0.0
    rate_429: float = 0.0
    rate_503: float = 0.0  # answered 503 "overloaded" (a throttle signal, unlike the 500s)
    retry_after: float = 1.0
    rps_limit: float | None = None
    api_key: str | None = None
    seed: int | None = None
    # Transport-level faults (after latency and the 500 draw), each its own share:
    reset_rate: float = 0.0  # headers sent, then the connection dropped: no usable response
    hang_rate: float = 0.0  # no answer for `hang_seconds` (longer than the client's timeout)
    hang_seconds: float = 60.0
    non_json_rate: float = 0.0  # 200 with a text/plain body that is not JSON
    missing_request_id_rate: float = 0.0  # answers sent without an x-request-id header


# The fault and pacing knobs: (flag, help). Each flag's destination is the
# MockConfig field of the same name, and so is its default.
FLOAT_KNOBS = (
    ("--latency-ms", "mean added latency per request"),
    ("--latency-jitter-ms", "uniform jitter around the mean"),
    ("--failure-rate", "share of requests answered 500 (0..1)"),
    ("--rate-429", "share of requests answered 429 with Retry-After (0..1)"),
    ("--rate-503", "share of requests answered 503 overloaded (0..1)"),
    ("--retry-after", "Retry-After seconds sent with random 429s"),
    ("--rps-limit", "token-bucket limit in requests per second; beyond it, 429"),
    ("--reset-rate", "share of requests whose connection is dropped mid-answer (0..1)"),
    ("--hang-rate", "share of requests left unanswered for --hang-seconds (0..1)"),
    ("--hang-seconds", "how long a hanging request stays unanswered"),
    ("--non-json-rate", "share of requests answered 200 with a non-JSON text body (0..1)"),
    ("--missing-request-id-rate", "share of answers sent without an x-request-id header (0..1)"),
)
SHARES = (
    "failure_rate",
    "rate_429",
    "rate_503",
    "reset_rate",
    "hang_rate",
    "non_json_rate",
    "missing_request_id_rate",
)


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `batchgate mock-upstream` flags."""
    defaults = MockConfig()
    parser.add_argument("--host", default=defaults.host, help=f"default {defaults.host}")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"default {defaults.port}")
    for flag, help_text in FLOAT_KNOBS:
        default = getattr(defaults, _field(flag))
        parser.add_argument(flag, type=float, default=default, help=help_text)
    parser.add_argument(
        "--api-key", default=None, help="if set, require 'Authorization: Bearer <key>'"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the random fault draws (repeatable runs)"
    )


def config_from_args(args: argparse.Namespace) -> MockConfig:
    for name in SHARES:
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise SystemExit(f"--{name.replace('_', '-')} must be between 0 and 1")
    knobs = {_field(flag): getattr(args, _field(flag)) for flag, _ in FLOAT_KNOBS}
    return MockConfig(host=args.host, port=args.port, api_key=args.api_key, seed=args.seed, **knobs)
