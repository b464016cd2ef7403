"""Retention: the sweep deletes expired files from storage and Redis, and only those."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobs.pipeline.file_expiry import FILES_EXPIRED, sweep_expired_files
from jobs.state.ids import TenantId, new_file_id
from jobs.state.records import FileRecord
from jobs.state.store import JobStore
from jobs.storage import LocalStorage, ObjectNotFound, WriterScope

TENANT = TenantId("t")


def stored_file(store: JobStore, storage: LocalStorage, expires_at: int | None) -> FileRecord:
    file_id = new_file_id()
    with WriterScope(storage.writer(f"files/{file_id}")) as out:
        out.write(b"x" * 10)
    record = FileRecord(file_id, TENANT, 10, 0, "f.jsonl", "batch", f"files/{file_id}", expires_at)
    store.put_file(record)
    return record


def test_sweep_deletes_expired_files_only(store: JobStore, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    now = int(time.time())
    expired = [stored_file(store, storage, now - 1 - i) for i in range(3)]
    kept = stored_file(store, storage, now + 3600)
    forever = stored_file(store, storage, None)
    assert store.stored_bytes(TENANT) == 50
    counted = FILES_EXPIRED._value.get()
    assert sweep_expired_files(store, storage, now, limit=2) == 2, "bounded per run"
    assert sweep_expired_files(store, storage, now) == 1
    assert sweep_expired_files(store, storage, now) == 0
    assert FILES_EXPIRED._value.get() == counted + 3
    for record in expired:
        assert store.get_file(TENANT, record.id) is None
        with pytest.raises(ObjectNotFound):
            storage.size(record.storage_key)
    for record in (kept, forever):
        assert store.get_file(TENANT, record.id) is not None
        assert storage.size(record.storage_key) == 10
    assert store.stored_bytes(TENANT) == 20
    assert store.client.hget(store.key("stats", "files"), "expired") == "3"
