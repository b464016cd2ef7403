"""What a new batch must satisfy before it is accepted (the file is checked later, offline)."""

from __future__ import annotations

import re

from jobs.errors import JobsError
from jobs.limits import Limits
from jobs.wire.lines import SUPPORTED_ENDPOINTS

_WINDOW = re.compile(r"^([1-9][0-9]*)([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
OUTPUT_FORMATS = ("jsonl", "parquet")


def window_seconds(completion_window: str, limits: Limits) -> int:
    """Seconds in a ``"24h"`` window. OpenAI accepts only ``24h``; shorter windows in seconds,
    minutes or hours (``"90s"``, ``"30m"``, ``"2h"``) are our extension, for jobs that are
    worthless after a deadline."""
    match = _WINDOW.match(completion_window)
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else 0
    if not 0 < seconds <= limits.max_completion_window_hours * 3600:
        raise JobsError(
            "completion_window must be a duration like 24h, 30m or 90s, at most "
            f"{limits.max_completion_window_hours}h; got {completion_window!r}",
            param="completion_window",
            code="invalid_completion_window",
        )
    return seconds


def check_endpoint(endpoint: str) -> None:
    if endpoint not in SUPPORTED_ENDPOINTS:
        raise JobsError(
            f"endpoint must be one of {', '.join(SUPPORTED_ENDPOINTS)}, got {endpoint!r}",
            param="endpoint",
            code="invalid_endpoint",
        )


# metadata.priority runs 0 (most urgent) to 9, lower first as in vLLM and on Celery's Redis
# transport; a batch that names none sits in the middle, so others can go ahead or behind.
DEFAULT_PRIORITY = 5
ALL_PRIORITIES = range(10)
# What a tenant may ask for unless its settings say more: 0 jumps every queue, so it is kept
# for the tenants an operator names.
NORMAL_PRIORITIES = range(1, 10)


def check_metadata(
    metadata: dict[str, str] | None, limits: Limits, priorities: range = NORMAL_PRIORITIES
) -> None:
    """OpenAI's metadata bounds, plus our two keys: ``priority`` (within the tenant's
    ``priorities``) and ``output_format``."""
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
    if "priority" in metadata and metadata["priority"] not in [str(p) for p in ALL_PRIORITIES]:
        raise JobsError("metadata.priority must be an integer 0-9", param="metadata.priority")
    if "priority" in metadata and int(metadata["priority"]) not in priorities:
        raise JobsError(
            f"metadata.priority {metadata['priority']} is not allowed for this tenant: "
            f"use {priorities.start}-{priorities.stop - 1}",
            param="metadata.priority",
            code="priority_not_allowed",
        )
    if metadata.get("output_format", "jsonl") not in OUTPUT_FORMATS:
        raise JobsError(
            f"metadata.output_format must be one of {', '.join(OUTPUT_FORMATS)}",
            param="metadata.output_format",
        )


def priority_of(metadata: dict[str, str] | None) -> int:
    return int((metadata or {}).get("priority", DEFAULT_PRIORITY))
