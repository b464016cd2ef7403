"""Quota bookkeeping on the real Redis: what counts as active and as enqueued."""

from __future__ import annotations

import time

import pytest

from jobs.state.ids import FileId, TenantId, new_batch_id
from jobs.state.quotas import ActiveBatches, Quota, QuotaExceeded, TokenEstimate, quota_for
from jobs.state.records import BatchRecord
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore

TENANT = TenantId("t")


def active_batch(store: JobStore, tokens: int, model: str = "m") -> BatchRecord:
    now = int(time.time())
    record = BatchRecord(
        new_batch_id(), TENANT, "/v1/chat/completions", FileId("f"), "24h", now, now
    )
    store.put_batch(record)
    fields = {"model": model, "enqueued_tokens": str(tokens)}
    store.transition(record.id, BatchStatus.IN_PROGRESS, now, fields)
    ActiveBatches(store).add(record)
    return record


def test_enqueued_tokens_count_active_batches_of_the_model(store: JobStore) -> None:
    active = ActiveBatches(store)
    first = active_batch(store, 300)
    active_batch(store, 1000, model="other")
    with pytest.raises(QuotaExceeded) as info:
        active.check_create(TENANT, Quota(max_enqueued_tokens=1300))
    assert info.value.status == 429 and "max_enqueued_tokens is 1300" in info.value.message
    active.check_create(TENANT, Quota(max_enqueued_tokens=1301, max_active_batches=3))
    newcomer = active_batch(store, 0)
    active.check_enqueue(newcomer, "m", 100, Quota(max_enqueued_tokens=400))  # 300 + 100 fit
    with pytest.raises(QuotaExceeded, match="for m"):
        active.check_enqueue(newcomer, "m", 101, Quota(max_enqueued_tokens=400))
    with pytest.raises(QuotaExceeded, match="max_active_batches is 3"):
        active.check_create(TENANT, Quota(max_active_batches=3))
    store.transition(first.id, BatchStatus.CANCELLING, int(time.time()))
    store.transition(first.id, BatchStatus.CANCELLED, int(time.time()))
    active.check_create(TENANT, Quota(max_active_batches=3))  # an ended batch frees its place
    active.check_enqueue(newcomer, "m", 400, Quota(max_enqueued_tokens=400))


def test_estimates_and_the_most_specific_quota() -> None:
    estimate = TokenEstimate(default_output=16)
    estimate.add(b'{"body": {"max_tokens": 10, "messages": []}}')  # 44 bytes: 11 + 10
    estimate.add(b'{"body": {"input": "x"}}')  # 24 bytes: 6 + the default 16
    assert estimate.tokens == 43
    quotas = {"*": Quota(max_active_batches=1), "t": Quota(max_active_batches=2)}
    quotas["t/m"] = Quota(max_active_batches=3)
    assert quota_for(quotas, "t", "m").max_active_batches == 3
    assert quota_for(quotas, "t").max_active_batches == 2
    assert quota_for(quotas, "u", "m").max_active_batches == 1
