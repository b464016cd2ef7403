"""What a new batch must satisfy before it is accepted (the file is checked later, offline)."""

from __future__ import annotations

import re

from jobs.errors import JobsError
from jobs.limits import Limits
from jobs.lines import EMBEDDINGS_URL, SUPPORTED_ENDPOINTS

_WINDOW = re.compile(r"^([1-9][0-9]*)h$")
OUTPUT_FORMATS = ("jsonl", "parquet")


def window_seconds(completion_window: str, limits: Limits) -> int:
    """Seconds in ``"24h"``-style windows; shorter windows like ``"1h"`` are an extension."""
    match = _WINDOW.match(completion_window)
    if not match or int(match.group(1)) > limits.max_completion_window_hours:
        raise JobsError(
            f"completion_window must be between 1h and {limits.max_completion_window_hours}h,"
            f" got {completion_window!r}",
            param="completion_window",
            code="invalid_completion_window",
        )
    return int(match.group(1)) * 3600


def check_endpoint(endpoint: str) -> None:
    if endpoint == EMBEDDINGS_URL:
        raise JobsError(
            "/v1/embeddings is not supported: the served models are generative",
            param="endpoint",
            code="unsupported_endpoint",
        )
    if endpoint not in SUPPORTED_ENDPOINTS:
        raise JobsError(
            f"endpoint must be one of {', '.join(SUPPORTED_ENDPOINTS)}, got {endpoint!r}",
            param="endpoint",
            code="invalid_endpoint",
        )


def check_metadata(metadata: dict[str, str] | None, limits: Limits) -> None:
    """OpenAI's metadata bounds, plus our two keys: ``priority`` and ``output_format``."""
    if not metadata:
        return
    if len(metadata) > limits.max_metadata_pairs:
        raise JobsError(
            f"metadata may hold at most {limits.max_metadata_pairs} pairs", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > limits.max_metadata_key_chars:
            raise JobsError(
                f"metadata keys are at most {limits.max_metadata_key_chars} characters",
                param=f"metadata.{key[:16]}",
            )
        if len(value) > limits.max_metadata_value_chars:
            raise JobsError(
                f"metadata values are at most {limits.max_metadata_value_chars} characters",
                param=f"metadata.{key}",
            )
    if "priority" in metadata and metadata["priority"] not in [str(p) for p in range(10)]:
        raise JobsError("metadata.priority must be an integer 0-9", param="metadata.priority")
    if metadata.get("output_format", "jsonl") not in OUTPUT_FORMATS:
        raise JobsError(
            f"metadata.output_format must be one of {', '.join(OUTPUT_FORMATS)}",
            param="metadata.output_format",
        )


def priority_of(metadata: dict[str, str] | None) -> int | None:
    value = (metadata or {}).get("priority")
    return int(value) if value is not None else None
