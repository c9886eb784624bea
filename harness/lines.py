"""The one builder of batch input lines: a chat completion request in
OpenAI's batch line format. Every test and benchmark builds its lines here,
choosing only the id, the words and the model."""

from __future__ import annotations

from typing import Any

CHAT = "/v1/chat/completions"


def chat_line(
    custom_id: str, content: str, model: str = "gpt-4o-mini", **extra: Any
) -> dict[str, Any]:
    """One chat line; `extra` goes into the request body (max_tokens, stream ...)."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **extra},
    }


def chat_lines(prefix: str, count: int, model: str = "gpt-4o-mini") -> list[dict[str, Any]]:
    """`count` lines with ids `prefix-0`, `prefix-1`, ..."""
    return [chat_line(f"{prefix}-{i}", f"q {i}", model) for i in range(count)]
