"""Response bodies of the endpoints a batch line calls, built from plain values.

The worker turns the engine's outputs into these records; this module only knows the
OpenAI shapes (``chat.completion``, ``text_completion``, error bodies), never the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TokenLogprob:
    """One generated position: the chosen token and the ``top`` alternatives, best first."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class Choice:
    text: str
    finish_reason: str  # "stop" | "length"
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class Completion:
    """Everything a response body needs from one finished request."""

    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


def _usage(completion: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
    }


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def _chat_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "content": [
            {
                "token": p.token,
                "logprob": p.logprob,
                "bytes": _utf8(p.token),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": _utf8(t)} for t, lp in p.top],
            }
            for p in logprobs
        ],
        "refusal": None,
    }


def chat_completion_body(
    completion: Completion, *, response_id: str, model: str, created: int
) -> dict[str, Any]:
    """A ``chat.completion`` object, as ``POST /v1/chat/completions`` returns it."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "finish_reason": c.finish_reason,
                "logprobs": _chat_logprobs(c.logprobs),
            }
            for i, c in enumerate(completion.choices)
        ],
        "usage": _usage(completion),
        "system_fingerprint": None,
    }


def _text_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """Legacy completions logprobs: parallel lists, ``text_offset`` into the choice's text.

    text:        "Hello world"
    tokens:      ["Hello", " world"]
    text_offset: [0,       5]
    """
    if logprobs is None:
        return None
    offsets, position = [], 0
    for p in logprobs:
        offsets.append(position)
        position += len(p.token)
    return {
        "tokens": [p.token for p in logprobs],
        "token_logprobs": [p.logprob for p in logprobs],
        "top_logprobs": [dict(p.top) for p in logprobs],
        "text_offset": offsets,
    }


def text_completion_body(
    completion: Completion, *, response_id: str, model: str, created: int
) -> dict[str, Any]:
    """A ``text_completion`` object, as ``POST /v1/completions`` returns it."""
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "logprobs": _text_logprobs(c.logprobs),
            }
            for i, c in enumerate(completion.choices)
        ],
        "usage": _usage(completion),
        "system_fingerprint": None,
    }


def error_body(
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    error_type: str = "invalid_request_error",
) -> dict[str, Any]:
    """An OpenAI error body, as an HTTP 4xx response carries it."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
