"""Retention: files past their ``expires_at`` are deleted from storage and from Redis.

Every file with an ``expires_at`` is indexed by it (``P:file_expiry``, jobs/state/store.py): an
upload's comes from ``expires_after`` or ``batch_file_ttl_s``, an output file's from the
batch's ``output_expires_after`` or ``output_file_ttl_s``. The sweep runs periodically on
the workers and takes the oldest first, a bounded number per run.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from jobs.state.store import JobStore
from jobs.storage import Storage

log = logging.getLogger(__name__)

FILES_EXPIRED = Counter("kvbatch_files_expired", "Files deleted by the retention sweep.")
BYTES_EXPIRED = Counter("kvbatch_file_bytes_expired", "Bytes of files the retention sweep deleted.")


def sweep_expired_files(store: JobStore, storage: Storage, now: int, limit: int = 1000) -> int:
    """Delete up to ``limit`` expired files; returns how many this call deleted."""
    deleted = 0
    for file_id in store.expired_file_ids(now, limit):
        record = store.load_file(file_id)
        if record is None:  # its record is gone: only the index entry is left
            store.client.zrem(store.key("file_expiry"), file_id)
            continue
        # Record first: a download racing the sweep then gets a 404, never half a file.
        if store.delete_file(record):
            storage.delete(record.storage_key)
            deleted += 1
            FILES_EXPIRED.inc()
            BYTES_EXPIRED.inc(record.bytes)
            store.client.hincrby(store.key("stats", "files"), "expired", 1)
    if deleted:
        log.info("retention sweep deleted %d expired files", deleted)
    return deleted
