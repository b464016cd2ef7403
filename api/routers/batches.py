"""``/v1/batches``: create, retrieve, list and cancel batches."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ResourcesDep, SettingsDep, StoreDep, TenantDep
from jobs.errors import JobsError, NotFound
from jobs.pipeline.batches import cancel_batch, create_batch
from jobs.pipeline.routing import note_unserved
from jobs.pipeline.uploads import MAX_EXPIRY_S, MIN_EXPIRY_S
from jobs.state.quotas import ActiveBatches, quota_for
from jobs.state.store import InvalidCursor
from jobs.webhooks.urls import check_batch_webhook
from jobs.wire.objects import BatchObject, ListPage

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class ExpiresAfter(BaseModel):
    """OpenAI's ``{anchor: "created_at", seconds}``: 1 hour to 30 days after the file is made."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)


class BatchCreate(BaseModel):
    """The ``batches.create`` body; unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=256)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None


@router.post("", response_model=BatchObject)
def create(
    body: BatchCreate,
    tenant: TenantDep,
    resources: ResourcesDep,
    settings: SettingsDep,
) -> BatchObject:
    """Accept the batch as ``validating``; its file is checked on the intake threads."""
    check_batch_webhook(body.metadata, tenant, settings.webhooks)
    active = ActiveBatches(resources.store)
    active.check_create(tenant, quota_for(settings.api.tenant_quotas, tenant))
    record = create_batch(
        resources.store,
        tenant,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        limits=settings.enforced_limits(),
        now=int(time.time()),
        priorities=settings.api.priorities_of(tenant),
        output_ttl_s=(
            body.output_expires_after.seconds
            if body.output_expires_after
            else settings.api.output_file_ttl_s
        ),
    )
    active.add(record)
    resources.submit_intake(record.id)
    return record.to_public()


@router.get("", response_model=ListPage[BatchObject])
def list_batches(
    tenant: TenantDep,
    resources: ResourcesDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPage[BatchObject]:
    try:
        page = resources.store.list_batches(tenant, after=after, limit=limit)
    except InvalidCursor as exc:
        raise JobsError(f"'after' names no batch: {exc}", param="after") from exc
    batches = [r.to_public() for r in page.items]
    if any(b.status == "in_progress" for b in batches):
        routes, workers = resources.settings.model_router(), resources.registry.workers_by_model()
        batches = [note_unserved(b, routes, workers) for b in batches]
    return ListPage[BatchObject].of(batches, page.has_more)


@router.get("/{batch_id}", response_model=BatchObject)
def retrieve(batch_id: str, tenant: TenantDep, resources: ResourcesDep) -> BatchObject:
    record = resources.store.get_batch(tenant, batch_id)
    if record is None:
        raise NotFound(f"No such batch: {batch_id}", param="batch_id", code="batch_not_found")
    batch = record.to_public()
    if batch.status != "in_progress":
        return batch
    workers = resources.registry.workers_by_model()
    return note_unserved(batch, resources.settings.model_router(), workers)


@router.post("/{batch_id}/cancel", response_model=BatchObject)
def cancel(batch_id: str, tenant: TenantDep, store: StoreDep) -> BatchObject:
    return cancel_batch(store, tenant, batch_id, int(time.time())).to_public()
