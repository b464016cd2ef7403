"""Shard results and batch endings on the real Redis with local storage (no engine)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.pipeline.finalize import BatchFinalizer
from jobs.pipeline.shards import ShardWriter
from jobs.state.ids import BatchId, FileId, TenantId
from jobs.state.records import BatchRecord
from jobs.state.shard_ledger import Deliveries, ShardLedger, ShardOutcome, write_shard_results
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.storage import LocalStorage, read_lines
from jobs.wire.lines import OutputLine

Parts = tuple[JobStore, ShardLedger, LocalStorage, BatchFinalizer]


@pytest.fixture
def parts(redis_client: redis.Redis, session_prefix: str, tmp_path: Path) -> Iterator[Parts]:
    store = JobStore(redis_client, f"{session_prefix}:fin-{secrets.token_hex(3)}")
    ledger = ShardLedger(redis_client, store)
    storage = LocalStorage(tmp_path)
    yield store, ledger, storage, BatchFinalizer(store, ledger, storage)


def make_batch(store: JobStore, storage: LocalStorage, num_lines: int, shard_size: int) -> str:
    batch_id = BatchId(f"batch_{secrets.token_hex(8)}")
    shards = ShardWriter(storage, batch_id, shard_size)
    for i in range(num_lines):
        shards.add(json.dumps({"custom_id": f"r{i}", "method": "POST"}).encode())
    num_shards = shards.finish()
    now = int(time.time())
    store.put_batch(
        BatchRecord(
            id=batch_id,
            tenant=TenantId("t"),
            endpoint="/v1/chat/completions",
            input_file_id=FileId("file-x"),
            completion_window="24h",
            created_at=now,
            expires_at=now + 3600,
            status=BatchStatus.IN_PROGRESS,
            num_shards=num_shards,
            shard_size=shard_size,
            counters={"total": num_lines},
        )
    )
    return batch_id


def finish_shard(ledger: ShardLedger, storage: LocalStorage, batch_id: str, index: int) -> None:
    ok = [OutputLine(id=f"o{index}-{i}", custom_id=f"r{index * 2 + i}") for i in range(2)]
    write_shard_results(storage, batch_id, index, ShardOutcome(outputs=ok))
    ledger.mark_done(batch_id, index)


def file_lines(store: JobStore, storage: LocalStorage, file_id: str | None) -> list[Any]:
    if file_id is None:
        return []
    record = store.get_file(TenantId("t"), file_id)
    assert record is not None and record.purpose == "batch_output"
    return [json.loads(x) for x in read_lines(storage, record.storage_key, 1 << 20) if x]


def test_completes_once_every_shard_is_done(parts: Parts) -> None:
    store, ledger, storage, finalizer = parts
    batch_id = make_batch(store, storage, 4, 2)
    finish_shard(ledger, storage, batch_id, 1)
    assert finalizer.try_finalize(BatchId(batch_id)) is None, "shard 0 is still missing"
    finish_shard(ledger, storage, batch_id, 0)
    assert finalizer.try_finalize(BatchId(batch_id)) is BatchStatus.COMPLETED
    assert finalizer.try_finalize(BatchId(batch_id)) is None, "exactly one finalizer"
    batch = store.load_batch(batch_id)
    assert batch is not None and batch.error_file_id is None
    outputs = file_lines(store, storage, batch.output_file_id)
    assert [line["custom_id"] for line in outputs] == ["r0", "r1", "r2", "r3"], "input order"
    assert (batch.counters["completed"], batch.counters["failed"]) == (4, 0)


def test_cancel_waits_for_running_shards_then_fills_the_rest(parts: Parts) -> None:
    store, ledger, storage, finalizer = parts
    batch_id = make_batch(store, storage, 6, 2)
    finish_shard(ledger, storage, batch_id, 0)
    store.transition(BatchId(batch_id), BatchStatus.CANCELLING, int(time.time()))
    ledger.hold_lease(batch_id, 1, ttl_s=30)
    assert finalizer.try_finalize(BatchId(batch_id)) is None, "shard 1 is still running"
    ledger.drop_lease(batch_id, 1)
    assert finalizer.try_finalize(BatchId(batch_id)) is BatchStatus.CANCELLED
    batch = store.load_batch(batch_id)
    assert batch is not None
    errors = file_lines(store, storage, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["r2", "r3", "r4", "r5"]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert (batch.counters["completed"], batch.counters["failed"]) == (2, 4)


def test_sweep_expires_a_batch_no_worker_touched(parts: Parts) -> None:
    store, _, storage, finalizer = parts
    batch_id = make_batch(store, storage, 3, 2)
    expired = {"expires_at": str(int(time.time()) - 1)}
    store._redis.hset(store.key("batch", BatchId(batch_id)), mapping=expired)
    assert BatchStatus.EXPIRED in finalizer.sweep()
    batch = store.load_batch(batch_id)
    assert batch is not None and batch.status is BatchStatus.EXPIRED
    errors = file_lines(store, storage, batch.error_file_id)
    assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 3


def test_rerun_takes_back_counts_of_the_unfinished_run(parts: Parts) -> None:
    store, ledger, _, _ = parts
    batch_id = BatchId(f"batch_{secrets.token_hex(8)}")
    ledger.add_counts(batch_id, 0, completed=3, output_tokens=30)
    ledger.add_counts(batch_id, 1, completed=1, output_tokens=5)
    assert ledger.record_delivery(batch_id, 0).starts == 1
    ledger.record_failed_run(batch_id, 0)  # e.g. storage was down: the task retries it
    assert ledger.record_delivery(batch_id, 0) == Deliveries(starts=2, failed_runs=1)
    assert ledger.record_delivery(batch_id, 0).unfinished == 2
    ledger.take_back_counts(batch_id, 0)
    ledger.add_counts(batch_id, 0, completed=4, output_tokens=40)
    raw = store.key("batch", batch_id)
    assert ledger._redis.hget(raw, "completed") == "5"
    assert ledger._redis.hget(raw, "output_tokens") == "45"
