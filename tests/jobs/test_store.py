"""The Redis repository: status moves, counters, cursors, and resuming intake after a restart."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import redis

from api.resources import Resources
from infra.harness.batches import chat_line, jsonl, wait_settled
from infra.harness.service import make_settings, run_server
from jobs.settings import Settings
from jobs.state.ids import FileId, TenantId, new_batch_id, new_file_id
from jobs.state.records import BatchRecord
from jobs.state.shard_ledger import ShardLedger
from jobs.state.status import ALLOWED_TRANSITIONS, BatchStatus
from jobs.state.store import InvalidCursor, JobStore

TENANT = TenantId("t")


def new_batch(
    store: JobStore, tenant: TenantId = TENANT, file_id: str | None = None
) -> BatchRecord:
    record = BatchRecord(
        id=new_batch_id(),
        tenant=tenant,
        endpoint="/v1/chat/completions",
        input_file_id=FileId(file_id or new_file_id()),
        completion_window="24h",
        created_at=100,
        expires_at=100 + 86400,
    )
    store.put_batch(record)
    return record


def test_transitions_follow_the_lifecycle(store: JobStore) -> None:
    batch = new_batch(store)
    assert store.transition(batch.id, BatchStatus.COMPLETED, 5) is None
    assert store.transition(batch.id, BatchStatus.IN_PROGRESS, 7) is BatchStatus.VALIDATING
    assert store.transition(batch.id, BatchStatus.CANCELLING, 8) is BatchStatus.IN_PROGRESS
    assert store.transition(batch.id, BatchStatus.FINALIZING, 9) is None
    assert store.transition(batch.id, BatchStatus.CANCELLED, 10) is BatchStatus.CANCELLING
    loaded = store.get_batch(TENANT, batch.id)
    assert loaded is not None and loaded.status is BatchStatus.CANCELLED
    assert loaded.timestamps == {"in_progress_at": 7, "cancelling_at": 8, "cancelled_at": 10}
    assert store.get_batch(TenantId("other"), batch.id) is None


def test_status_predicates() -> None:
    assert BatchStatus.CANCELLED.is_terminal and not BatchStatus.CANCELLING.is_terminal
    assert BatchStatus.CANCELLED in ALLOWED_TRANSITIONS[BatchStatus.VALIDATING]
    assert BatchStatus.IN_PROGRESS not in ALLOWED_TRANSITIONS[BatchStatus.COMPLETED]


def test_counters_are_atomic_increments(store: JobStore, ledger: ShardLedger) -> None:
    batch = new_batch(store)
    ledger.add_counts(batch.id, 0, completed=3, input_tokens=10, output_tokens=5)
    ledger.add_counts(batch.id, 1, completed=1, failed=2)
    public = store.get_batch(TENANT, batch.id)
    assert public is not None
    shown = public.to_public()
    assert (shown.request_counts.completed, shown.request_counts.failed) == (4, 2)
    assert shown.usage.total_tokens == 15


def test_cursor_pagination(store: JobStore) -> None:
    ids = [new_batch(store).id for _ in range(5)]
    first = store.list_batches(TENANT, after=None, limit=2)
    assert [b.id for b in first.items] == ids[::-1][:2] and first.has_more
    last = store.list_batches(TENANT, after=ids[1], limit=10)
    assert [b.id for b in last.items] == [ids[0]] and not last.has_more
    with pytest.raises(InvalidCursor):
        store.list_batches(TENANT, after="batch_gone", limit=2)


def test_restarted_api_resumes_validation(tmp_path: Path) -> None:
    """A batch accepted by a process that died before intake is validated by the next one."""
    prefix = f"kvbatch-test-restart-{secrets.token_hex(4)}"
    settings = make_settings("local", prefix, tmp_path, None)
    with run_server(settings) as server:
        client = server.client()
        file = client.files.create(file=("a.jsonl", jsonl([chat_line("x")])), purpose="batch")
    resources = Resources.open(settings)
    try:
        orphan = new_batch(resources.store)
        fields = {"input_file_id": file.id, "tenant": "tenant-a"}
        resources.store._redis.hset(resources.store.key("batch", orphan.id), mapping=fields)
        resources.store.mark_validating(orphan.id)
    finally:
        resources.close()
    with run_server(settings) as server:
        assert wait_settled(server.client(), orphan.id).status == "in_progress"
    client_redis = redis.Redis.from_url(settings.redis.redis_url)
    for key in client_redis.scan_iter(match=f"{prefix}*"):
        client_redis.delete(key)


def test_batch_status_counts_move_with_each_transition(store: JobStore) -> None:
    first, second = new_batch(store), new_batch(store)
    assert store.batch_status_counts() == {"validating": 2}
    store.transition(first.id, BatchStatus.IN_PROGRESS, 7)
    assert store.transition(first.id, BatchStatus.COMPLETED, 8) is None  # refused: no move
    store.transition(second.id, BatchStatus.FAILED, 9)
    counts = store.batch_status_counts()
    assert {k: v for k, v in counts.items() if v} == {"in_progress": 1, "failed": 1}


@pytest.mark.parametrize(
    ("env", "prefix"),
    [
        ({}, "kvbatch:broker:"),
        ({"key_prefix": "team-a"}, "team-a:broker:"),
        ({"key_prefix": "team-a", "broker_key_prefix": "celery:"}, "celery:"),
        ({"key_prefix": "team-a", "broker_key_prefix": ""}, ""),
    ],
)
def test_the_broker_keys_get_the_deployments_prefix(env: dict[str, str], prefix: str) -> None:
    settings = Settings.from_flat(env)
    assert settings.redis.resolved_broker_key_prefix == prefix
    options = settings.redis.broker_transport_options()
    assert options.get("global_keyprefix", "") == prefix
