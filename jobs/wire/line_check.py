"""Checks one input line at a time, so a file is validated as it streams past.

Two kinds of problem, as OpenAI draws the line:

- the file's: not JSON, no ``custom_id``/``method``/``url``/``body``, a duplicate
  ``custom_id``, another url or model than the rest, too long. The batch fails validation
  (a :class:`LineIssue` in ``errors.data``).
- the body's: a parameter the endpoint would refuse (``temperature: 5``, an unknown field,
  an image). The line is a request answered with a 400 in the error file, and every other
  line runs (a :class:`RejectedLine` in its shard).

The checker remembers only what must span lines: the ``custom_id``s seen (bounded by the
request limit) and the file's one model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobs.limits import Limits
from jobs.wire.body_refusals import refusal_of
from jobs.wire.deep_json import DeepJSONError, load_deep, too_deep_rejection
from jobs.wire.embedding_bodies import EmbeddingBody, check_embedding_bounds
from jobs.wire.lines import (
    CHAT_URL,
    COMPLETIONS_URL,
    EMBEDDINGS_URL,
    RESPONSES_URL,
    SUPPORTED_ENDPOINTS,
    BodyRejection,
    RejectedLine,
)
from jobs.wire.output_schema import SharedSchema
from jobs.wire.request_bodies import ChatCompletionBody, CompletionBody, check_bounds
from jobs.wire.response_bodies import ResponsesBody

_LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})
MAX_CUSTOM_ID_CHARS = 512
# Location parts pydantic adds for the members of a union ("str", "list[TextPart]"): the
# caller never wrote them, so a ``param`` leaves them out.
_UNION_TAG = re.compile(r".*[\[\]].*|str|int|float|bool|dict|list|none")


@dataclass(slots=True)
class LineIssue:
    """One entry of a batch's ``errors.data``."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "message": self.message, "param": self.param}


def _param(loc: tuple[int | str, ...], body: Any = None) -> str | None:
    """The field as the body names it: no union tags, no ``url`` tag or ``body.`` of a whole
    line's validation. Given the raw ``body``, a part that is not in it (a discriminated
    union's tag, as in ``text.format[json_schema].schema``) is left out too, unless it is the
    last part (a missing field)."""
    parts = [p for p in loc if p not in SUPPORTED_ENDPOINTS]
    if parts[:1] == ["body"]:
        parts = parts[1:]
    kept: list[int | str] = []
    node = body
    for i, part in enumerate(parts):
        if _UNION_TAG.fullmatch(str(part)):
            continue
        inside = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if inside:
            node = node[part]
        elif body is not None and i < len(parts) - 1:
            continue
        else:
            node = None
        kept.append(part)
    return ".".join(str(p) for p in kept) or None


def rejection_of(exc: ValidationError, body: Any = None) -> BodyRejection:
    """The body's first validation error as the endpoint's 400 would word it; ``body`` (the
    raw one) lets the field be named as the caller wrote it."""
    first = exc.errors()[0]
    param = _param(first["loc"], body)
    if first["type"] == "extra_forbidden":
        return BodyRejection(
            code="unsupported_parameter", message=f"unsupported parameter: {param}", param=param
        )
    if first["type"] == "missing":
        return BodyRejection(
            code="missing_required_parameter",
            message=f"missing required parameter: {param}",
            param=param,
        )
    message = str(first["msg"]).removeprefix("Value error, ")
    where = f"{param}: " if param and not message.startswith(param) else ""
    return BodyRejection(code="invalid_request", message=f"{where}{message}", param=param)


_BODY_MODELS: dict[
    str, type[ChatCompletionBody | CompletionBody | EmbeddingBody | ResponsesBody]
] = {
    CHAT_URL: ChatCompletionBody,
    COMPLETIONS_URL: CompletionBody,
    EMBEDDINGS_URL: EmbeddingBody,
    RESPONSES_URL: ResponsesBody,
}


class LineChecker:
    def __init__(self, endpoint: str, limits: Limits) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self.model: str | None = None
        self.shared_schema = SharedSchema()  # the one json_schema of every line, if any
        self._custom_ids: set[str] = set()

    def check(self, line_no: int, raw: bytes | None) -> LineIssue | RejectedLine | None:
        """The line's file-level problem, its body's rejection, or None for a valid request."""
        if raw is None:
            return LineIssue(
                "line_too_long",
                f"line is longer than {self.limits.max_line_bytes} bytes",
                line_no,
            )
        deep = False
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return LineIssue("invalid_encoding", "line is not valid UTF-8", line_no)
        except json.JSONDecodeError as exc:
            return LineIssue("invalid_json_line", f"line is not valid JSON: {exc.msg}", line_no)
        except RecursionError:
            # The C decoder recurses once per level; a line nested deeper is still a request
            # (its body answered with a 400), read by a decoder that does not recurse.
            try:
                obj, deep = load_deep(raw), True
            except DeepJSONError as exc:
                return LineIssue("invalid_json_line", f"line is not valid JSON: {exc}", line_no)
        if not isinstance(obj, dict):
            return LineIssue("invalid_json_line", "line must be a JSON object", line_no)
        return self._check_envelope(line_no, obj) or self._check_body(line_no, obj, deep)

    def _check_envelope(self, line_no: int, obj: dict[str, Any]) -> LineIssue | None:
        extra = sorted(set(obj) - _LINE_KEYS)
        if extra:
            return LineIssue(
                "unsupported_parameter", f"unsupported line field: {extra[0]}", line_no, extra[0]
            )
        for name in ("custom_id", "method", "url", "body"):
            if name not in obj:
                return LineIssue(
                    "missing_required_parameter", f"missing required field: {name}", line_no, name
                )
        custom_id = obj["custom_id"]
        if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS:
            return LineIssue(
                "invalid_custom_id",
                f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID_CHARS} characters",
                line_no,
                "custom_id",
            )
        if custom_id in self._custom_ids:
            return LineIssue(
                "duplicate_custom_id",
                f"custom_id {custom_id!r} appears more than once",
                line_no,
                "custom_id",
            )
        self._custom_ids.add(custom_id)
        if obj["method"] != "POST":
            return LineIssue("invalid_method", "method must be POST", line_no, "method")
        return self._check_url(line_no, obj["url"])

    def _check_url(self, line_no: int, url: Any) -> LineIssue | None:
        if url not in SUPPORTED_ENDPOINTS:
            return LineIssue("invalid_url", f"unsupported url: {url!r}", line_no, "url")
        if url != self.endpoint:
            return LineIssue(
                "mismatched_url",
                f"url {url} does not match the batch endpoint {self.endpoint}",
                line_no,
                "url",
            )
        return None

    def _check_body(
        self, line_no: int, obj: dict[str, Any], deep: bool = False
    ) -> LineIssue | RejectedLine | None:
        body = obj["body"]
        if not isinstance(body, dict):
            return LineIssue(
                "invalid_request",
                "body must be a JSON object (in Parquet: the JSON text of an object)",
                line_no,
                "body",
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return LineIssue(
                "missing_required_parameter", "body.model is required", line_no, "body.model"
            )
        if model not in self.limits.served_models:
            return LineIssue(
                "model_not_found", f"model {model!r} is not served here", line_no, "body.model"
            )
        if self.model is not None and model != self.model:
            return LineIssue(
                "mismatched_model",
                f"every line must use one model: {model!r} differs from {self.model!r}",
                line_no,
                "body.model",
            )
        self.model = model
        rejection = too_deep_rejection(body) if deep else self._body_rejection(obj["url"], body)
        if rejection is None:
            return None
        return RejectedLine(custom_id=obj["custom_id"], rejection=rejection)

    def _body_rejection(self, url: str, body: dict[str, Any]) -> BodyRejection | None:
        refusal = refusal_of(url, body)
        if refusal is not None:
            return refusal
        model = _BODY_MODELS[url]
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            return rejection_of(exc, body)
        if isinstance(parsed, EmbeddingBody):
            bound = check_embedding_bounds(parsed, self.limits)
        elif isinstance(parsed, ResponsesBody):
            bound = None
            if (
                parsed.max_output_tokens is not None
                and parsed.max_output_tokens > self.limits.max_tokens
            ):
                bound = (
                    "max_output_tokens",
                    (
                        f"max_output_tokens must be at most {self.limits.max_tokens}, "
                        f"got {parsed.max_output_tokens}"
                    ),
                )
        else:
            bound = check_bounds(parsed, self.limits)
        if bound is None:
            if isinstance(parsed, ChatCompletionBody | CompletionBody):
                self.shared_schema.note(parsed)
            return None
        param, message = bound
        return BodyRejection(code="invalid_request", message=message, param=param)
