"""Per-tenant (and per-model) quotas: enqueued tokens, active batches, stored file bytes.

Settings give a :class:`Quota` per key, the most specific one applying::

    "tenant-a/smollm2-135m-instruct"  a tenant's batches of one model
    "tenant-a"                        a tenant's batches of any model
    "*"                               every tenant without its own entry

A batch's model is known only once intake has read its file, so a model's entry applies to
enqueued tokens (checked at intake); active batches and stored bytes use the tenant's.

A batch is active from its create until it ends; the tenant's active set in Redis
(``P:active:{tenant}``) is pruned of ended batches whenever it is read. Enqueued tokens are
OpenAI's: each request's input, estimated at intake as a quarter of its line's bytes (the
API holds no tokenizer), plus the most it may generate (``max_tokens`` /
``max_completion_tokens`` / ``max_output_tokens``, else the service's cap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.errors import JobsError
from jobs.state.ids import TenantId
from jobs.state.records import BatchRecord
from jobs.state.store import JobStore

BYTES_PER_TOKEN = 4
_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_enqueued_tokens: int | None = Field(default=None, ge=0)
    max_active_batches: int | None = Field(default=None, ge=0)
    max_file_bytes: int | None = Field(default=None, ge=0)


class QuotaExceeded(JobsError):
    status = 429
    error_type = "rate_limit_error"


def quota_for(quotas: dict[str, Quota], tenant: str, model: str | None = None) -> Quota:
    for key in (f"{tenant}/{model}" if model else None, tenant, "*"):
        if key is not None and key in quotas:
            return quotas[key]
    return Quota()


@dataclass(slots=True)
class TokenEstimate:
    """Enqueued tokens of one batch's lines, added up as intake reads them."""

    default_output: int
    tokens: int = 0

    def add(self, raw: bytes) -> None:
        body: Any = json.loads(raw).get("body")
        output = self.default_output
        if isinstance(body, dict):
            asked = [body[f] for f in _OUTPUT_FIELDS if isinstance(body.get(f), int)]
            output = asked[0] if asked else output
        self.tokens += len(raw) // BYTES_PER_TOKEN + output


class ActiveBatches:
    """Which batches of a tenant still hold quota, and how many tokens they enqueued."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._redis: Any = store.client

    def add(self, record: BatchRecord) -> None:
        self._redis.sadd(self.store.key("active", record.tenant), record.id)

    def _active(self, tenant: str) -> list[dict[str, str]]:
        key = self.store.key("active", tenant)
        ids = sorted(self._redis.smembers(key))
        with self._redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hmget(self.store.key("batch", batch_id), "status", "model", "enqueued_tokens")
            rows = pipe.execute()
        active, ended = [], []
        for batch_id, (status, model, tokens) in zip(ids, rows, strict=True):
            if status in (None, "completed", "failed", "expired", "cancelled"):
                ended.append(batch_id)
            else:
                active.append({"id": batch_id, "model": model or "", "tokens": tokens or "0"})
        if ended:
            self._redis.srem(key, *ended)
        return active

    def check_create(self, tenant: str, quota: Quota) -> None:
        """Refuse a new batch (429) while the tenant is at a limit."""
        active = self._active(tenant)
        limit = quota.max_active_batches
        if limit is not None and len(active) >= limit:
            raise QuotaExceeded(
                f"Active batch limit reached: max_active_batches is {limit} for this tenant "
                f"and {len(active)} batches are active. Try again once some have ended.",
                code="active_batch_limit_exceeded",
            )
        enqueued = sum(int(b["tokens"]) for b in active)
        self._check_tokens(enqueued, 0, quota.max_enqueued_tokens, None)

    def check_enqueue(
        self, batch: BatchRecord, model: str | None, tokens: int, quota: Quota
    ) -> None:
        """Raise if ``tokens`` more for ``model`` would pass the tenant's enqueued limit."""
        enqueued = sum(
            int(b["tokens"])
            for b in self._active(batch.tenant)
            if b["id"] != batch.id and (model is None or b["model"] in ("", model))
        )
        self._check_tokens(enqueued, tokens, quota.max_enqueued_tokens, model)

    @staticmethod
    def _check_tokens(enqueued: int, more: int, limit: int | None, model: str | None) -> None:
        if limit is None:
            return
        # A new batch (more == 0, its size unknown yet) needs room left; a sized one must fit.
        full = enqueued >= limit if more == 0 else enqueued + more > limit
        if not full:
            return
        scope = f" for {model}" if model else ""
        raise QuotaExceeded(
            f"Enqueued token limit reached{scope}: max_enqueued_tokens is {limit}, "
            f"{enqueued} are enqueued and this batch needs {more}. Try again once some "
            "in_progress batches have completed.",
            code="token_limit_exceeded",
        )


def check_file_bytes(store: JobStore, tenant: TenantId, quota: Quota, size: int) -> None:
    """Refuse (429) a file that would take the tenant past its stored bytes."""
    limit = quota.max_file_bytes
    held = store.stored_bytes(tenant)
    if limit is not None and held + size > limit:
        raise QuotaExceeded(
            f"File storage limit reached: max_file_bytes is {limit} for this tenant, "
            f"{held} bytes are stored and this file has {size}.",
            param="file",
            code="storage_limit_exceeded",
        )
