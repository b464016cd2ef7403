"""File and batch records as kept in Redis hashes, and their public objects.

A hash holds strings only: ``None`` is stored as the empty string, lists and dicts as JSON.
Counters (request counts, token usage) are plain integer fields so that workers can bump
them with ``HINCRBY`` while the API reads the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic import BaseModel

from jobs.state.ids import BatchId, FileId, TenantId
from jobs.state.status import BatchStatus
from jobs.wire.objects import (
    BatchErrorItem,
    BatchErrors,
    BatchObject,
    BatchUsage,
    FileObject,
    InputTokensDetails,
    OutputTokensDetails,
    RequestCounts,
)

COUNTER_FIELDS = (
    "total",
    "completed",
    "failed",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    # output and error lines of the shards done so far (jobs/pipeline/live_results.py)
    "result_lines",
)
TIMESTAMP_FIELDS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
_JSON_FIELDS = ("errors", "metadata")


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _opt_int(raw: str) -> int | None:
    return int(raw) if raw else None


def _same_named(record: object, public: type[BaseModel]) -> dict[str, Any]:
    """The record's values (fields and properties) for the public object's fields of the same
    name; ``to_public`` replaces those the record keeps in another form."""
    return {name: getattr(record, name) for name in public.model_fields if hasattr(record, name)}


@dataclass(slots=True)
class FileRecord:
    id: FileId
    tenant: TenantId
    bytes: int
    created_at: int
    filename: str
    purpose: str
    storage_key: str
    expires_at: int | None = None

    def to_hash(self) -> dict[str, str]:
        return {f.name: _encode(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> FileRecord:
        return cls(
            id=FileId(raw["id"]),
            tenant=TenantId(raw["tenant"]),
            bytes=int(raw["bytes"]),
            created_at=int(raw["created_at"]),
            filename=raw["filename"],
            purpose=raw["purpose"],
            storage_key=raw["storage_key"],
            expires_at=_opt_int(raw.get("expires_at", "")),
        )

    def to_public(self) -> FileObject:
        return FileObject(**_same_named(self, FileObject))


@dataclass(slots=True)
class BatchRecord:
    id: BatchId
    tenant: TenantId
    endpoint: str
    input_file_id: FileId
    completion_window: str
    created_at: int
    expires_at: int
    status: BatchStatus = BatchStatus.VALIDATING
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] | None = None
    timestamps: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    num_shards: int = 0
    shard_size: int = 0
    output_ttl_s: int | None = None  # output/error files expire this long after they are made

    def to_hash(self) -> dict[str, str]:
        flat = {
            f.name: _encode(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("timestamps", "counters")
        }
        flat.update({name: str(value) for name, value in self.timestamps.items()})
        flat.update({name: str(self.counters.get(name, 0)) for name in COUNTER_FIELDS})
        return flat

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> BatchRecord:
        decoded = {name: json.loads(raw[name]) if raw.get(name) else None for name in _JSON_FIELDS}
        return cls(
            id=BatchId(raw["id"]),
            tenant=TenantId(raw["tenant"]),
            endpoint=raw["endpoint"],
            input_file_id=FileId(raw["input_file_id"]),
            completion_window=raw["completion_window"],
            created_at=int(raw["created_at"]),
            expires_at=int(raw["expires_at"]),
            status=BatchStatus(raw["status"]),
            model=raw.get("model") or None,
            output_file_id=raw.get("output_file_id") or None,
            error_file_id=raw.get("error_file_id") or None,
            errors=decoded["errors"] or [],
            metadata=decoded["metadata"],
            timestamps={name: int(raw[name]) for name in TIMESTAMP_FIELDS if raw.get(name)},
            counters={name: int(raw.get(name) or 0) for name in COUNTER_FIELDS},
            num_shards=int(raw.get("num_shards") or 0),
            shard_size=int(raw.get("shard_size") or 0),
            output_ttl_s=_opt_int(raw.get("output_ttl_s", "")),
        )

    def to_public(self) -> BatchObject:
        c = self.counters
        usage = BatchUsage(
            input_tokens=c.get("input_tokens", 0),
            input_tokens_details=InputTokensDetails(cached_tokens=c.get("cached_tokens", 0)),
            output_tokens=c.get("output_tokens", 0),
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=c.get("reasoning_tokens", 0)
            ),
            total_tokens=c.get("input_tokens", 0) + c.get("output_tokens", 0),
        )
        errors = (
            BatchErrors(data=[BatchErrorItem(**e) for e in self.errors]) if self.errors else None
        )
        counts = RequestCounts(
            total=c.get("total", 0), completed=c.get("completed", 0), failed=c.get("failed", 0)
        )
        public = _same_named(self, BatchObject) | self.timestamps
        public |= {"status": self.status.value, "errors": errors, "request_counts": counts}
        return BatchObject(**public, usage=usage)

    @property
    def downloadable_lines(self) -> int:
        """Lines a client can read now: the shards done so far, or the final files'."""
        c = self.counters
        if self.status.is_terminal:
            return c.get("completed", 0) + c.get("failed", 0)
        return c.get("result_lines", 0)
