"""``/v1/files``: upload, list, retrieve, download and delete input and output files."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import ResourcesDep, SettingsDep, StorageDep, StoreDep, TenantDep
from api.upload import receive_upload
from jobs.errors import JobsError, NotFound
from jobs.pipeline.uploads import file_storage_key, new_file_record
from jobs.state.ids import TenantId, new_file_id
from jobs.state.quotas import check_file_bytes, quota_for
from jobs.state.records import FileRecord
from jobs.state.store import InvalidCursor, JobStore
from jobs.storage import ObjectNotFound, Storage
from jobs.wire.objects import FileDeleted, FileObject, ListPage

router = APIRouter(prefix="/v1/files", tags=["files"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


def _owned(store: JobStore, tenant: TenantId, file_id: str) -> FileRecord:
    record = store.get_file(tenant, file_id)
    if record is None:
        raise NotFound(f"No such file: {file_id}", param="file_id", code="file_not_found")
    return record


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def create_file(
    request: Request, tenant: TenantDep, resources: ResourcesDep, settings: SettingsDep
) -> FileObject:
    """Stream the upload into storage, then record it (the bytes are never held whole)."""
    file_id = new_file_id()
    key = file_storage_key(file_id)
    upload = await receive_upload(request, resources.storage, key, settings.limits.max_file_bytes)
    try:
        record = new_file_record(
            file_id=file_id,
            tenant=tenant,
            filename=upload.filename,
            size=upload.size,
            fields=upload.fields,
            created_at=int(time.time()),
            default_ttl_s=settings.api.batch_file_ttl_s,
        )
        quota = quota_for(settings.api.tenant_quotas, tenant)
        check_file_bytes(resources.store, tenant, quota, upload.size)
        await to_thread.run_sync(resources.store.put_file, record)
    except JobsError:
        await to_thread.run_sync(resources.storage.delete, key)
        raise
    return record.to_public()


@router.get("", response_model=ListPage[FileObject])
def list_files(
    tenant: TenantDep,
    store: StoreDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> ListPage[FileObject]:
    try:
        page = store.list_files(
            tenant, after=after, limit=limit, newest_first=order == "desc", purpose=purpose
        )
    except InvalidCursor as exc:
        raise JobsError(f"'after' names no file: {exc}", param="after") from exc
    return ListPage[FileObject].of([r.to_public() for r in page.items], page.has_more)


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, tenant: TenantDep, store: StoreDep) -> FileObject:
    return _owned(store, tenant, file_id).to_public()


def _stream(storage: Storage, key: str) -> Iterator[bytes]:
    yield from storage.read_chunks(key)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(
    file_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> StreamingResponse:
    """The file's bytes, streamed from storage chunk by chunk."""
    record = _owned(store, tenant, file_id)
    try:
        size = storage.size(record.storage_key)
    except ObjectNotFound as exc:
        raise NotFound(f"No content for file: {file_id}", param="file_id") from exc
    return StreamingResponse(
        _stream(storage, record.storage_key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(
    file_id: str, tenant: TenantDep, store: StoreDep, storage: StorageDep
) -> FileDeleted:
    record = _owned(store, tenant, file_id)
    store.delete_file(record)
    storage.delete(record.storage_key)
    return FileDeleted(id=record.id)
