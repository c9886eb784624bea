"""Dry-run estimates (`POST /v1/batches/estimate`): tokens and cost of a
batch input file before any provider is called. Pure functions over plain
values; the route feeds each valid line to an `EstimateTally` while the file
streams through the very validator a batch uses (`tasks/validate.py`).

How input tokens are counted, best first:

1. tiktoken, if it is importable and its encodings are on disk already
   (never downloaded; batchgate does not depend on it), plus the message
   overhead of OpenAI's counting rule for chat (`MESSAGE_OVERHEAD` per
   message, `REPLY_PRIMING` per request).
2. learned: characters per token of this model, from the usage of finished
   chunks (the gateway adds up each chunk's input characters and input
   tokens per model, `storage/repositories/text_stats.py`). It is the provider's own count,
   message overheads included, and works for any model of any provider.
3. the default of DEFAULT_CHARS_PER_TOKEN characters per token, the usual
   rule of thumb for English text on OpenAI's tokenizers.

"Characters" are those of the text a line sends: message contents, `input`,
`prompt` and `instructions` (`input_text`), the same count the run posts.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.records import ProviderRecord
from tasks.budgets import Price, cost_of, price_for
from tasks.routing import RoutingError, resolve_route

DEFAULT_CHARS_PER_TOKEN = 4.0
TEXT_FIELDS = ("messages", "input", "prompt", "instructions")
MAX_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
# OpenAI's rule for counting a chat request's tokens (its cookbook, "How to
# count tokens with tiktoken"): 3 per message plus about 1 for the role, and 3
# to prime the reply.
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def _text_parts(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _text_parts(item, out)
    elif isinstance(value, dict):
        for key in ("content", "text", "input_text"):
            if key in value:
                _text_parts(value[key], out)


def text_parts(body: Mapping[str, Any]) -> list[str]:
    """The texts a request body sends (token ids and images left out)."""
    parts: list[str] = []
    for name in TEXT_FIELDS:
        if name in body:
            _text_parts(body[name], parts)
    return parts


def input_chars(body: Mapping[str, Any]) -> int:
    """Characters of the text a request body sends."""
    return sum(len(p) for p in text_parts(body))


def tokenizer_count(encoding: Any, body: Mapping[str, Any], parts: list[str]) -> int:
    """Input tokens by a tokenizer: the body's texts (`text_parts`), and for
    chat OpenAI's overhead of each message (its role and separators) and of
    priming the reply."""
    tokens = len(encoding.encode("\n".join(parts)))
    messages = body.get("messages")
    if isinstance(messages, list):
        tokens += MESSAGE_OVERHEAD * len(messages) + REPLY_PRIMING
    return tokens


def max_output_tokens(body: Mapping[str, Any]) -> int | None:
    """The most output tokens a line allows, times `n` choices; None if unbounded."""
    for name in MAX_OUTPUT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            n = body.get("n")
            return value * (n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1)
    return None


# Estimates run in the gateway's thread pool: one at a time swaps tiktoken's
# downloader, so no thread restores another's stand-in as the original.
_TIKTOKEN_LOCK = threading.Lock()


@functools.lru_cache(maxsize=64)
def _tiktoken_encoding(model: str) -> Any:
    """An offline tiktoken encoding for `model`, or None. Never downloads:
    tiktoken fetches missing encodings from the internet, so this only uses
    it when the encoding file is in its cache already."""
    try:
        import tiktoken
        import tiktoken.load as tiktoken_load

        def offline(blobpath: str) -> bytes:  # refuse the download tiktoken would make
            raise OSError(f"not cached: {blobpath}")

        with _TIKTOKEN_LOCK:
            original = tiktoken_load.read_file
            tiktoken_load.read_file = offline
            try:
                try:
                    return tiktoken.encoding_for_model(model.split("/")[-1])
                except KeyError:
                    return tiktoken.get_encoding("o200k_base")
            finally:
                tiktoken_load.read_file = original
    except Exception:
        return None


@dataclass
class ModelTally:
    model: str | None
    provider: str | None
    routing_error: str | None = None
    lines: int = 0
    chars: int = 0
    tiktoken_tokens: int = 0
    max_output: int = 0
    lines_without_max_output: int = 0


@dataclass
class EstimateTally:
    """Adds up each valid line by (model, provider); `observe` is the
    validator's per-line callback."""

    providers: Sequence[ProviderRecord]
    groups: dict[str | None, ModelTally] = field(default_factory=dict)

    def observe(self, line: Mapping[str, Any]) -> None:
        body = line["body"]
        model = body.get("model") if isinstance(body.get("model"), str) else None
        group = self.groups.get(model)
        if group is None:
            route = resolve_route(model, self.providers)
            if isinstance(route, RoutingError):
                group = ModelTally(model, None, route.code)
            else:
                group = ModelTally(model, route.provider.name)
            self.groups[model] = group
        group.lines += 1
        parts = text_parts(body)  # walked once for both counts
        group.chars += sum(len(p) for p in parts)
        encoding = _tiktoken_encoding(model) if model else None
        if encoding is not None:
            group.tiktoken_tokens += tokenizer_count(encoding, body, parts)
        limit = max_output_tokens(body)
        if limit is None:
            group.lines_without_max_output += 1
        else:
            group.max_output += limit

    def result(
        self, learned: Mapping[str, tuple[int, int, int]], prices: Iterable[Price]
    ) -> dict[str, Any]:
        return estimate_object(list(self.groups.values()), learned, list(prices))


def chars_per_token(model: str | None, learned: Mapping[str, tuple[int, int, int]]) -> float | None:
    """The learned ratio of `model` (its exact name, else any name ending in it)."""
    stats = learned.get(model or "")
    if stats is None and model and "/" in model:
        stats = learned.get(model.split("/", 1)[1])
    if stats is None or stats[0] <= 0 or stats[1] <= 0:
        return None
    return stats[0] / stats[1]


def estimate_group(
    group: ModelTally, learned: Mapping[str, tuple[int, int, int]], prices: Sequence[Price]
) -> dict[str, Any]:
    ratio = chars_per_token(group.model, learned)
    if group.tiktoken_tokens:
        tokens, source = group.tiktoken_tokens, "tiktoken"
    elif ratio is not None:
        tokens, source = round(group.chars / ratio), "learned"
    else:
        tokens, source = round(group.chars / DEFAULT_CHARS_PER_TOKEN), "default"
    max_out = group.max_output if group.lines_without_max_output == 0 else None
    priced = price_for(group.model, prices) is not None
    input_cost = cost_of(group.model, tokens, 0, 0, prices) if priced else None
    output_cost = cost_of(group.model, 0, max_out, 0, prices) if priced and max_out else None
    return {
        "model": group.model,
        "provider": group.provider,
        "routing_error": group.routing_error,
        "lines": group.lines,
        "input_characters": group.chars,
        "estimated_input_tokens": tokens,
        "token_source": source,
        "max_output_tokens": max_out,
        "lines_without_max_output_tokens": group.lines_without_max_output,
        "estimated_input_cost_usd": input_cost,
        "max_output_cost_usd": output_cost if max_out is not None else None,
        "priced": priced,
    }


def estimate_object(
    groups: Sequence[ModelTally],
    learned: Mapping[str, tuple[int, int, int]],
    prices: Sequence[Price],
) -> dict[str, Any]:
    """Totals over the per-model rows. `estimated_cost_usd` is the input cost
    plus, where every line caps its output, the cost of the most output it
    allows: an upper bound on output, an estimate on input."""
    rows = [estimate_group(g, learned, prices) for g in groups]
    outputs = [r["max_output_tokens"] for r in rows]
    bounded = bool(rows) and all(o is not None for o in outputs)
    cost = sum(
        (r["estimated_input_cost_usd"] or 0.0) + (r["max_output_cost_usd"] or 0.0) for r in rows
    )
    return {
        "lines": sum(r["lines"] for r in rows),
        "estimated_input_tokens": sum(r["estimated_input_tokens"] for r in rows),
        "max_output_tokens": sum(o or 0 for o in outputs) if bounded else None,
        "estimated_cost_usd": round(cost, 6),
        "unpriced_models": sorted({r["model"] or "" for r in rows if not r["priced"]}),
        "models": rows,
    }
