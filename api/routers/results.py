"""``GET /v1/batches/{id}/results``: the result lines of a batch, readable while it runs.

An extension of OpenAI's API: the output and error lines of the shards done so far, in
pages, with an opaque cursor to go on (``after``). Every line is byte-identical to its line
in the final output or error file and appears exactly once across pages, also across the
batch's end (jobs/pipeline/live_results.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import SettingsDep, StorageDep, StoreDep, TenantDep
from jobs.errors import NotFound
from jobs.pipeline.live_results import LiveResults
from jobs.settings import Settings
from jobs.wire.results_cursor import CursorCodec, ResultsCursor

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class ResultLine(BaseModel):
    type: Literal["output", "error"]
    line: str  # the line as the final file holds it, without its newline


class ResultsList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ResultLine]
    next_cursor: str
    has_more: bool  # more lines may be readable now: ask again with after=next_cursor
    finished: bool  # the batch ended and every line of it was served
    batch_status: str


def cursor_codec(settings: Settings) -> CursorCodec:
    """Signs cursors with the configured secret, or one derived from the service's keys."""
    secret = settings.api.results_cursor_secret
    if not secret:
        keys = json.dumps(sorted(settings.api.api_keys.items())).encode()
        return CursorCodec(hashlib.sha256(b"kvbatch results cursor\0" + keys).digest())
    return CursorCodec(secret.encode())


@router.get("/{batch_id}/results", response_model=ResultsList)
async def results(
    batch_id: str,
    tenant: TenantDep,
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ResultsList:
    record = await to_thread.run_sync(store.get_batch, tenant, batch_id)
    if record is None:
        raise NotFound(f"No such batch: {batch_id}", param="batch_id", code="batch_not_found")
    codec = cursor_codec(settings)
    cursor = codec.decode(after, record.id) if after else ResultsCursor(record.id)
    reader = LiveResults(store, storage, settings.limits.max_line_bytes)
    page = await to_thread.run_sync(reader.page, record, cursor, limit)
    assert page.cursor is not None
    data = [ResultLine(type=part, line=line.decode()) for part, line in page.lines]
    return ResultsList(
        data=data,
        next_cursor=codec.encode(page.cursor),
        has_more=page.has_more,
        finished=page.finished,
        batch_status=record.status.value,
    )
