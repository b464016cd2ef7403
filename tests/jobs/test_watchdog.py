"""The shard watchdog on a real Redis: which shards it sends again, and when."""

from __future__ import annotations

import pytest

from jobs.pipeline.watchdog import ShardWatchdog
from jobs.state.ids import FileId, TenantId, new_batch_id, new_file_id
from jobs.state.records import BatchRecord
from jobs.state.shard_ledger import ShardLedger, StopReason
from jobs.state.status import BatchStatus
from jobs.state.store import JobStore

SILENCE_S = 100.0
STARTED = 1_000
MODEL = "model-a"


class SentShards:
    """Stands in for the broker here (the reliability tests use the real one): what the
    watchdog sent, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int]] = []

    def dispatch(self, batch_id: str, shard_index: int, priority: int, model: str) -> str:
        assert model == MODEL  # to the queue of the batch's model
        self.sent.append((batch_id, shard_index, priority))
        return f"task-{len(self.sent)}"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def running_batch(store: JobStore, num_shards: int, priority: str | None = None) -> BatchRecord:
    record = BatchRecord(
        id=new_batch_id(),
        tenant=TenantId("t"),
        endpoint="/v1/chat/completions",
        input_file_id=FileId(new_file_id()),
        completion_window="24h",
        created_at=STARTED,
        expires_at=STARTED + 86400,
        status=BatchStatus.IN_PROGRESS,
        metadata={"priority": priority} if priority else None,
        timestamps={"in_progress_at": STARTED},
        num_shards=num_shards,
        model=MODEL,
    )
    store.put_batch(record)
    return record


def test_only_silent_shards_are_sent_again_and_then_wait_another_silence(
    store: JobStore,
    ledger: ShardLedger,
) -> None:
    batch = running_batch(store, num_shards=5, priority="2")
    sender, clock = SentShards(), Clock(STARTED + SILENCE_S - 1)
    watchdog = ShardWatchdog(store, ledger, sender, SILENCE_S, clock)
    assert watchdog.sweep() == []  # every message is younger than the silence

    ledger.mark_done(batch.id, 0)  # finished
    assert ledger.hold_lease(batch.id, 1, ttl_s=600)  # running now
    ledger.mark_seen(batch.id, [2], STARTED + 50)  # a run started later (then died)
    clock.now = STARTED + SILENCE_S + 1
    assert watchdog.sweep() == [(batch.id, 3), (batch.id, 4)]
    assert sender.sent == [(batch.id, 3, 2), (batch.id, 4, 2)]

    clock.now = STARTED + SILENCE_S + 60  # shard 2 falls silent; 3 and 4 were just resent
    assert watchdog.check(batch.id) == [2]
    clock.now = STARTED + 2 * SILENCE_S + 2
    assert watchdog.check(batch.id) == [3, 4]
    assert [index for _, index, _ in sender.sent] == [3, 4, 2, 3, 4]


@pytest.mark.parametrize("how", ["cancelling", "stop_flag", "all_done", "finalizing"])
def test_batches_that_need_no_more_runs_are_left_alone(
    store: JobStore, ledger: ShardLedger, how: str
) -> None:
    batch = running_batch(store, num_shards=2)
    if how == "cancelling":
        store.transition(batch.id, BatchStatus.CANCELLING, STARTED + 1)
    elif how == "stop_flag":
        ledger.request_stop(batch.id, StopReason.EXPIRED)
    elif how == "all_done":
        ledger.mark_done(batch.id, 0)
        ledger.mark_done(batch.id, 1)
    else:
        store.transition(batch.id, BatchStatus.FINALIZING, STARTED + 1)
    sender = SentShards()
    watchdog = ShardWatchdog(store, ledger, sender, SILENCE_S, Clock(STARTED + 10 * SILENCE_S))
    assert watchdog.check(batch.id) == []
    assert sender.sent == []


def test_a_dead_run_is_sent_again_at_once_and_a_queued_shard_is_not(
    store: JobStore,
    ledger: ShardLedger,
) -> None:
    """Well inside the silence: shard 0 ran and its lease lapsed (the worker died), shard 1
    runs under a live lease, shard 2 only waits in the queue (no worker had room)."""
    batch = running_batch(store, num_shards=3)
    sender = SentShards()
    watchdog = ShardWatchdog(store, ledger, sender, SILENCE_S, Clock(STARTED + 5))
    for index in (0, 1):
        assert ledger.hold_lease(batch.id, index, ttl_s=600, token=f"run-{index}")
        ledger.mark_running(batch.id, index, f"run-{index}")
    assert watchdog.sweep() == []

    store.client.delete(store.key("shard_lease", batch.id, "0"))  # the lease lapsed
    assert watchdog.sweep() == [(batch.id, 0)]
    assert ledger.running(batch.id) == {1: "run-1"}, "the dead run is accounted for"
    assert ledger.resends(batch.id) == {0: 1}
    assert watchdog.sweep() == [], "sent once, not at every sweep"

    # The resent run starts, then ends however it ends: nothing to send.
    assert ledger.hold_lease(batch.id, 0, ttl_s=600, token="rerun")
    ledger.mark_running(batch.id, 0, "rerun")
    assert not ledger.clear_running(batch.id, 0, "run-0"), "only the run's own token clears it"
    assert ledger.clear_running(batch.id, 0, "rerun")
    ledger.drop_lease(batch.id, 0, token="rerun")
    assert watchdog.sweep() == []
    assert [index for _, index, _ in sender.sent] == [0]
