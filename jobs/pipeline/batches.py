"""Creating and cancelling batches: the rules, apart from HTTP and from storage details."""

from __future__ import annotations

from jobs.errors import JobsError, NotFound
from jobs.limits import Limits
from jobs.pipeline.admission import (
    NORMAL_PRIORITIES,
    check_endpoint,
    check_metadata,
    window_seconds,
)
from jobs.state.ids import TenantId, new_batch_id
from jobs.state.records import BatchRecord
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore


def create_batch(
    store: JobStore,
    tenant: TenantId,
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    limits: Limits,
    now: int,
    priorities: range = NORMAL_PRIORITIES,
    output_ttl_s: int | None = None,
) -> BatchRecord:
    """Record a new ``validating`` batch and queue it for intake; the caller starts intake.

    ``priorities`` are the ``metadata.priority`` values this tenant may ask for;
    ``output_ttl_s`` is how long its output and error files are kept."""
    check_endpoint(endpoint)
    window_s = window_seconds(completion_window, limits)
    check_metadata(metadata, limits, priorities)
    file = store.get_file(tenant, input_file_id)
    if file is None:
        raise NotFound(
            f"No such file: {input_file_id}", param="input_file_id", code="file_not_found"
        )
    if file.purpose != "batch":
        raise JobsError(
            f"file {input_file_id} has purpose {file.purpose!r}, expected 'batch'",
            param="input_file_id",
        )
    record = BatchRecord(
        id=new_batch_id(),
        tenant=tenant,
        endpoint=endpoint,
        input_file_id=file.id,
        completion_window=completion_window,
        created_at=now,
        expires_at=now + window_s,
        metadata=metadata or None,
        output_ttl_s=output_ttl_s,
    )
    store.mark_validating(record.id)
    store.put_batch(record)
    return record


def cancel_batch(store: JobStore, tenant: TenantId, batch_id: str, now: int) -> BatchRecord:
    """Ask a batch to stop: ``cancelling`` for the worker to finish, or at once if not started.

    A batch still validating has dispatched nothing, so it goes straight to ``cancelled``;
    intake sees the move and drops its shards.
    """
    record = store.get_batch(tenant, batch_id)
    if record is None:
        raise NotFound(f"No such batch: {batch_id}", param="batch_id", code="batch_not_found")
    if record.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        return record
    if not record.status.is_cancellable:
        raise JobsError(
            f"Cannot cancel a batch with status {record.status.value}",
            param="batch_id",
            code="batch_not_cancellable",
        )
    moved = None
    if record.status is BatchStatus.VALIDATING:
        moved = store.transition(record.id, BatchStatus.CANCELLED, now, {"cancelling_at": str(now)})
    if moved is None:
        store.transition(record.id, BatchStatus.CANCELLING, now)
    refreshed = store.get_batch(tenant, batch_id)
    assert refreshed is not None
    return refreshed
