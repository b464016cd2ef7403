"""Response bodies of the endpoints a batch line calls, built from plain values.

The worker turns the engine's outputs into these records; this module only knows the
OpenAI shapes (``chat.completion``, ``text_completion``, ``response``, embedding
lists, error bodies), never the engine.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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


def _chat_choice(choice: Choice) -> dict[str, Any]:
    return {
        "message": {"role": "assistant", "content": choice.text, "refusal": None},
        "finish_reason": choice.finish_reason,
        "logprobs": _chat_logprobs(choice.logprobs),
    }


def _text_choice(choice: Choice) -> dict[str, Any]:
    return {
        "text": choice.text,
        "finish_reason": choice.finish_reason,
        "logprobs": _text_logprobs(choice.logprobs),
    }


def completion_body(
    completion: Completion, *, chat: bool, response_id: str, model: str, created: int
) -> dict[str, Any]:
    """A ``chat.completion`` object as ``POST /v1/chat/completions`` returns it or, not
    ``chat``, a ``text_completion`` as ``POST /v1/completions`` does: one envelope around
    choices that hold a message or a text, each with its endpoint's form of logprobs."""
    choice_body = _chat_choice if chat else _text_choice
    return {
        "id": response_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": i, **choice_body(c)} for i, c in enumerate(completion.choices)],
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


def response_body(
    completion: Completion,
    *,
    response_id: str,
    message_id: str,
    model: str,
    created: int,
    request: dict[str, Any],
) -> dict[str, Any]:
    """A ``response`` object, as ``POST /v1/responses`` returns it, for one text answer.

    ``request`` holds the settings the caller sent (instructions, temperature, top_p,
    max_output_tokens, metadata, user, text); the object echoes them, as OpenAI's does.
    A text cut by ``max_output_tokens`` makes the response ``incomplete``.
    """
    choice = completion.choices[0]
    cut = choice.finish_reason == "length"
    status = "incomplete" if cut else "completed"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "model": model,
        "output": [
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [{"type": "output_text", "text": choice.text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": completion.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": completion.cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens": completion.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "temperature": request.get("temperature", 1.0),
        "top_p": request.get("top_p", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "metadata": request.get("metadata") or {},
        "user": request.get("user"),
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "previous_response_id": None,
        "reasoning": None,
        "store": False,
        "truncation": "disabled",
        "background": False,
    }


def embedding_list_body(
    vectors: list[list[float]], *, model: str, prompt_tokens: int, encoding_format: str
) -> dict[str, Any]:
    """A ``list`` of ``embedding`` objects, as ``POST /v1/embeddings`` returns it, in input
    order. ``base64`` is each vector's little-endian float32 bytes, as the SDK decodes them."""
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": _base64_floats(v) if encoding_format == "base64" else v,
            }
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
