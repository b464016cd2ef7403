"""Result lines while a batch runs: real Redis, local storage, the real finalizer (no engine)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobs.errors import JobsError
from jobs.pipeline.file_expiry import sweep_expired_files
from jobs.pipeline.finalize import BatchFinalizer
from jobs.pipeline.live_results import LiveResults
from jobs.state.ids import BatchId, TenantId
from jobs.state.shard_ledger import ShardLedger, ShardOutcome, write_shard_results
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore
from jobs.storage import LocalStorage, read_lines
from jobs.wire.lines import LineError, OutputLine
from jobs.wire.results_cursor import CursorCodec, ResultsCursor
from tests.worker import test_finalize as finalize_tests

TENANT = TenantId("t")


class Parts:
    def __init__(self, client: redis.Redis, prefix: str, root: Path) -> None:
        self.store = JobStore(client, prefix)
        self.ledger = ShardLedger(client, self.store)
        self.storage = LocalStorage(root)
        self.finalizer = BatchFinalizer(self.store, self.ledger, self.storage)
        self.reader = LiveResults(self.store, self.storage, 1 << 20)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"kvbatch-test-live-{secrets.token_hex(4)}"
    yield Parts(client, prefix, tmp_path)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def make_batch(parts: Parts, num_lines: int, shard_size: int) -> BatchId:
    return BatchId(finalize_tests.make_batch(parts.store, parts.storage, num_lines, shard_size))


def finish_shard(parts: Parts, batch_id: str, index: int, size: int) -> None:
    """Shard ``index`` done: even lines succeed, odd ones fail (both files get lines)."""
    outcome = ShardOutcome()
    for i in range(index * size, (index + 1) * size):
        if i % 2:
            err = LineError(code="x", message=f"line {i}")
            outcome.errors.append(OutputLine(id=f"e{i}", custom_id=f"r{i}", error=err))
        else:
            outcome.outputs.append(OutputLine(id=f"o{i}", custom_id=f"r{i}"))
    write_shard_results(parts.storage, batch_id, index, outcome)
    parts.ledger.mark_done(batch_id, index, len(outcome.outputs), len(outcome.errors))


def read_page(parts: Parts, batch_id: str, cursor: ResultsCursor, limit: int) -> tuple:
    batch = parts.store.load_batch(batch_id)
    assert batch is not None
    page = parts.reader.page(batch, cursor, limit)
    assert page.cursor is not None
    return page.lines, page.cursor, page.finished


def final_lines(parts: Parts, file_id: str | None) -> list[bytes]:
    if file_id is None:
        return []
    record = parts.store.get_file(TENANT, file_id)
    assert record is not None
    return [x for x in read_lines(parts.storage, record.storage_key, 1 << 20) if x]


@pytest.mark.parametrize("end", ["completed", "cancelled"])
def test_pages_across_the_batch_end_serve_each_final_line_once(parts: Parts, end: str) -> None:
    batch_id = make_batch(parts, 20, 4)  # shards 0..4
    served: list[tuple[str, bytes]] = []
    cursor = ResultsCursor(batch_id)
    for index in (3, 0, 1):  # done out of input order
        finish_shard(parts, batch_id, index, 4)
    parts.ledger.mark_done(batch_id, 3, 2, 2)  # a second run's mark counts nothing twice
    batch = parts.store.load_batch(batch_id)
    assert batch is not None and batch.to_public().downloadable_lines == 12
    lines, cursor, finished = read_page(parts, batch_id, cursor, 3)
    served += lines
    assert [json.loads(x)["custom_id"] for _, x in lines] == ["r12", "r14", "r13"]
    assert not finished
    lines, cursor, _ = read_page(parts, batch_id, cursor, 4)  # r15, then shard 0
    served += lines
    if end == "completed":
        finish_shard(parts, batch_id, 2, 4)
        finish_shard(parts, batch_id, 4, 4)
        assert parts.finalizer.try_finalize(batch_id) is BatchStatus.COMPLETED
    else:
        parts.store.transition(batch_id, BatchStatus.CANCELLING, int(time.time()))
        assert parts.finalizer.try_finalize(batch_id) is BatchStatus.CANCELLED
    while not finished:  # the shard objects are gone: the rest comes from the final files
        lines, cursor, finished = read_page(parts, batch_id, cursor, 3)
        served += lines
    batch = parts.store.load_batch(batch_id)
    assert batch is not None
    outputs = [x for kind, x in served if kind == "output"]
    errors = [x for kind, x in served if kind == "error"]
    assert sorted(outputs) == sorted(final_lines(parts, batch.output_file_id)), "byte-identical"
    assert sorted(errors) == sorted(final_lines(parts, batch.error_file_id))
    assert len(served) == len(set(served)) == 20, "each line exactly once"
    assert batch.to_public().downloadable_lines == 20


def test_cursors_are_signed_and_bound_to_their_batch() -> None:
    codec = CursorCodec(b"secret")
    token = codec.encode(ResultsCursor("batch_a", 2, 1, 5))
    assert codec.decode(token, "batch_a") == ResultsCursor("batch_a", 2, 1, 5)
    with pytest.raises(JobsError, match="another batch"):
        codec.decode(token, "batch_b")
    with pytest.raises(JobsError, match="not a cursor this service issued"):
        CursorCodec(b"other").decode(token, "batch_a")
    head, _, sig = token.partition(".")
    forged = ResultsCursor("batch_a", 0, 0, 0)
    forged_head = CursorCodec(b"guess").encode(forged).partition(".")[0]
    for bad in (f"{forged_head}.{sig}", "nonsense", f"{head}.!!", ""):
        with pytest.raises(JobsError) as info:
            codec.decode(bad, "batch_a")
        assert info.value.status == 400 and info.value.code == "invalid_cursor"


def test_output_files_expire_as_the_batch_asked(parts: Parts) -> None:
    batch_id = make_batch(parts, 4, 4)
    parts.store._redis.hset(parts.store.key("batch", batch_id), mapping={"output_ttl_s": "7200"})
    finish_shard(parts, batch_id, 0, 4)
    assert parts.finalizer.try_finalize(batch_id) is BatchStatus.COMPLETED
    batch = parts.store.load_batch(batch_id)
    assert batch is not None and batch.output_file_id and batch.error_file_id
    for file_id in (batch.output_file_id, batch.error_file_id):
        record = parts.store.get_file(TENANT, file_id)
        assert record is not None and record.expires_at is not None
        assert record.expires_at - record.created_at == 7200
    later = int(time.time()) + 7201
    assert sweep_expired_files(parts.store, parts.storage, later) == 2
    assert parts.store.get_file(TENANT, batch.output_file_id) is None
