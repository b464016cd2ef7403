"""Checks one input line at a time, so a file is validated as it streams past.

The checker remembers only what must span lines: the ``custom_id``s seen (bounded by the
request limit) and the file's one model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobs.limits import Limits
from jobs.lines import EMBEDDINGS_URL, INPUT_LINE, SUPPORTED_ENDPOINTS
from jobs.output_schema import SharedSchema
from jobs.request_bodies import check_bounds

_LINE_KEYS = frozenset({"custom_id", "method", "url", "body"})


@dataclass(slots=True)
class LineIssue:
    """One entry of a batch's ``errors.data``."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "message": self.message, "param": self.param}


def _pydantic_issue(exc: ValidationError, line_no: int) -> LineIssue:
    first = exc.errors()[0]
    # The discriminated union puts the matched ``url`` first in the location: drop it.
    loc = [str(p) for p in first["loc"] if p not in SUPPORTED_ENDPOINTS]
    param = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        return LineIssue("unsupported_parameter", f"unsupported parameter: {param}", line_no, param)
    if first["type"] == "missing":
        return LineIssue(
            "missing_required_parameter", f"missing required parameter: {param}", line_no, param
        )
    return LineIssue("invalid_request", f"{param}: {first['msg']}", line_no, param)


class LineChecker:
    def __init__(self, endpoint: str, limits: Limits) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self.model: str | None = None
        self.shared_schema = SharedSchema()  # the one json_schema of every line, if any
        self._custom_ids: set[str] = set()

    def check(self, line_no: int, raw: bytes | None) -> LineIssue | None:
        """The line's first problem, or None when it is a valid request for this batch."""
        if raw is None:
            return LineIssue(
                "line_too_long",
                f"line is longer than {self.limits.max_line_bytes} bytes",
                line_no,
            )
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return LineIssue("invalid_encoding", "line is not valid UTF-8", line_no)
        except json.JSONDecodeError as exc:
            return LineIssue("invalid_json_line", f"line is not valid JSON: {exc.msg}", line_no)
        except RecursionError:
            # The C decoder recurses once per level: a line of a million "[" must be an
            # answer for that line, not the end of the intake thread.
            return LineIssue("invalid_json_line", "line is nested too deeply", line_no)
        if not isinstance(obj, dict):
            return LineIssue("invalid_json_line", "line must be a JSON object", line_no)
        return self._check_envelope(line_no, obj) or self._check_body(line_no, obj)

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
        if not isinstance(custom_id, str) or not custom_id:
            return LineIssue(
                "invalid_custom_id", "custom_id must be a non-empty string", line_no, "custom_id"
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
        if url == EMBEDDINGS_URL:
            return LineIssue(
                "unsupported_endpoint",
                "/v1/embeddings is not supported by the served models",
                line_no,
                "url",
            )
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

    def _check_body(self, line_no: int, obj: dict[str, Any]) -> LineIssue | None:
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
        try:
            line = INPUT_LINE.validate_python(obj)
        except ValidationError as exc:
            return _pydantic_issue(exc, line_no)
        bound = check_bounds(line.body, self.limits)
        if bound is not None:
            param, message = bound
            return LineIssue("invalid_request", message, line_no, f"body.{param}")
        self.shared_schema.note(line.body)
        return None
