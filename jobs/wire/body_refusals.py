"""Features of OpenAI's endpoints that kvbatch does not serve, refused by name.

The body models would refuse these too, but with a schema's words ("messages.0.content.str:
Input should be a valid string"); a caller who sent an image or a tool deserves to read
"image inputs are not supported by model X". Each check looks at the raw body, before the
models, and says which field to change.
"""

from __future__ import annotations

from typing import Any

from jobs.wire.lines import CHAT_URL, EMBEDDINGS_URL, RESPONSES_URL, BodyRejection
from jobs.wire.response_bodies import UNSERVED_FIELDS

_TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call")

# Content part types other than text, by the name a message uses for them.
_PART_KINDS = {
    "image_url": "image",
    "input_image": "image",
    "input_audio": "audio",
    "audio": "audio",
    "file": "file",
    "input_file": "file",
}


def _unsupported(param: str, message: str) -> BodyRejection:
    return BodyRejection(code="unsupported_parameter", message=message, param=param)


def _unsupported_value(param: str, message: str) -> BodyRejection:
    return BodyRejection(code="unsupported_value", message=message, param=param)


def refusal_of(url: str, body: dict[str, Any]) -> BodyRejection | None:
    """The first feature of ``body`` that we do not serve, or None."""
    model = body.get("model")
    if body.get("stream") is True:
        return _unsupported_value(
            "stream", "stream: true is not supported in a batch: answers go to the output file"
        )
    if url == CHAT_URL:
        return _tools(body, model) or _content_parts(body.get("messages"), model)
    if url == RESPONSES_URL:
        return _responses_features(body)
    if url == EMBEDDINGS_URL:
        return None
    return _completion_features(body)


def _tools(body: dict[str, Any], model: Any) -> BodyRejection | None:
    for name in _TOOL_FIELDS:
        if body.get(name) is not None:
            return _unsupported(name, f"{name}: tool calling is not supported by model {model}")
    return None


def _content_parts(messages: Any, model: Any) -> BodyRejection | None:
    if not isinstance(messages, list):
        return None
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = _PART_KINDS.get(str(part.get("type"))) if isinstance(part, dict) else None
            if kind is not None:
                return _unsupported_value(
                    f"messages.{i}.content.{j}",
                    f"{kind} inputs are not supported by model {model}",
                )
    return None


def _completion_features(body: dict[str, Any]) -> BodyRejection | None:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and any(isinstance(p, str | list) for p in prompt):
        return _unsupported_value(
            "prompt", "prompt lists are not supported: put one prompt on each line of the batch"
        )
    if body.get("echo") is True:
        return _unsupported_value("echo", "echo: true is not supported")
    if body.get("suffix") is not None:
        return _unsupported("suffix", "suffix (text insertion) is not supported")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        return _unsupported("best_of", "best_of is not supported: use n")
    return None


def _responses_features(body: dict[str, Any]) -> BodyRejection | None:
    """The first Responses feature of ``body`` we do not serve, or None."""
    model = body.get("model")
    for name, reason in UNSERVED_FIELDS.items():
        if body.get(name) not in (None, False, [], {}):
            return BodyRejection(
                code="unsupported_parameter", message=f"{name}: {reason} ({model})", param=name
            )
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind not in (None, "message"):
            return BodyRejection(
                code="unsupported_value",
                message=f"input items of type {kind!r} are not supported: send messages",
                param=f"input.{i}.type",
            )
        parts = item.get("content")
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype not in ("input_text", "output_text"):
                return BodyRejection(
                    code="unsupported_value",
                    message=f"{ptype} content is not supported by model {model}: send input_text",
                    param=f"input.{i}.content.{j}",
                )
    return None
