"""Workers started as deployments start them (``kvbatch worker``, no thread count): each
takes shards as its engine's capacity frees, leaves the rest in Redis for other workers,
takes the most urgent first, and still hands back what it holds on SIGTERM.

The engine here holds 8 sequences and shards have 8 lines, so a worker's watermark is
8 + 8 lines: two shards, plus at most the one a fetch already under way brings.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from infra.harness.batches import jsonl, result_lines, wait_batch
from infra.harness.service import MODEL
from infra.harness.workers import WorkerProcess, worker_stats
from jobs.pipeline.fair_share import PRIORITY_STEPS, FairQueue
from tests.reliability.conftest import fast_stack, long_lines
from tests.worker.conftest import Stack
from tests.worker.service import assert_each_once
from worker.queue_probe import QueueProbe

pytestmark = pytest.mark.slow

# A long visibility timeout: shards waiting in the queue behind a full worker are what these
# tests watch, and the watchdog would send again any shard silent for twice that long.
SMALL_ENGINE: dict[str, object] = {"engine_max_num_seqs": 8, "visibility_timeout_s": 300}


def submit(stack: Stack, lines: list[dict[str, Any]], priority: int | None = None) -> str:
    client = stack.client()
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    metadata = {"priority": str(priority)} if priority is not None else None
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    while client.batches.retrieve(batch.id).status == "validating":
        time.sleep(0.05)
    return batch.id


def queue_depth(stack: Stack) -> int:
    """Shards left in Redis: in the broker's list or held back by fair share (its window
    lets only a few into the broker, each worker's take lets in the next)."""
    s = stack.settings
    queue = s.model_router().queue_of(MODEL)
    probe = QueueProbe(s.redis.resolved_broker_url, queue, s.redis.broker_transport_options())
    # Read only (``waiting``): it never pumps, so it sends nothing.
    fair = FairQueue(stack.redis, s.redis.key_prefix, no_send, dict, s.fair_share, lane=queue)
    try:
        return probe() + sum(sum(fair.waiting(p).values()) for p in PRIORITY_STEPS)
    finally:
        probe.close()


def no_send(batch_id: str, shard_index: int, priority: int) -> None:
    raise AssertionError("queue_depth only reads")


def shards_done(stack: Stack, batch_id: str) -> int:
    """Shards of 8 lines whose every line the ledger counts as answered."""
    key = f"{stack.settings.redis.key_prefix}:shard_counts:{batch_id}"
    counts: dict[str, str] = stack.redis.hgetall(key)  # type: ignore[assignment]
    return sum(
        1 for field, value in counts.items() if field.endswith(":completed") and int(value) >= 8
    )


def stats(stack: Stack, worker: WorkerProcess) -> dict[str, float]:
    return worker_stats(stack.redis, stack.settings.redis.key_prefix, worker.name)


def test_a_full_worker_leaves_shards_in_the_queue_and_a_second_worker_runs_them(
    stack_parts: dict[str, Any],
) -> None:
    with fast_stack(**stack_parts, **SMALL_ENGINE) as stack:  # type: ignore[arg-type]
        lines = long_lines("h", 12 * 8, max_tokens=24)
        first = stack.start_worker(concurrency=None)
        assert stats(stack, first)["intake_watermark"] == 8  # no shard read yet
        batch_id = submit(stack, lines)

        held, depths = [], []
        deadline = time.monotonic() + 60
        while stats(stack, first).get("num_resolved", 0) < 24:
            assert time.monotonic() < deadline, first.log_tail()
            held.append(stats(stack, first)["intake_shards_held"])
            depths.append(queue_depth(stack))
            time.sleep(0.1)
        assert max(held) <= 3, held
        assert max(depths) >= 12 - 3, "the shards the worker cannot start soon stay in Redis"

        # The first worker is frozen while the second starts, so the shards it left in Redis
        # are still there when the second is ready, however slow its start-up is.
        os.killpg(first.process.pid, signal.SIGSTOP)
        try:
            left_in_queue = queue_depth(stack)
            done = shards_done(stack, batch_id)
            second = stack.start_worker(concurrency=None)
        finally:
            os.killpg(first.process.pid, signal.SIGCONT)
        # The ledger, not the stats published every 0.3 s: a fast machine may finish a
        # fourth shard between the last stats read and the freeze.
        assert left_in_queue >= 12 - done - 3, "the shards done, at most three held, the rest"
        assert left_in_queue >= 2, "work left for a second worker"
        batch = wait_batch(stack.client(), batch_id, {"completed", "failed"}, timeout_s=180)
        assert batch.status == "completed", batch
        outputs, errors = result_lines(stack.client(), batch)
        assert_each_once([line["custom_id"] for line in lines], outputs, errors)
        assert not errors
        # At least one: the resumed first worker may win the race for the last shards.
        assert stats(stack, second)["intake_shards_taken"] >= 1, "the second worker got work"
        first_stats = stats(stack, first)
        assert first_stats["engine_capacity"] == 8
        assert first_stats["intake_watermark"] == 16
        assert first_stats["engine_request_seconds"] > 0
        assert first_stats["engine_busy_s"] > 0


def test_the_most_urgent_shard_is_taken_when_the_engine_has_room(
    stack_parts: dict[str, Any],
) -> None:
    with fast_stack(**stack_parts, **SMALL_ENGINE) as stack:  # type: ignore[arg-type]
        worker = stack.start_worker(concurrency=None)
        low = submit(stack, long_lines("low", 12 * 8, max_tokens=24), priority=9)
        while stats(stack, worker).get("num_resolved", 0) < 8:
            time.sleep(0.05)
        urgent = submit(stack, long_lines("urgent", 8, max_tokens=8), priority=1)
        client = stack.client()
        done = wait_batch(client, urgent, {"completed", "failed"}, timeout_s=120)
        assert done.status == "completed", done
        later = client.batches.retrieve(low)
        assert later.status == "in_progress", "the urgent batch jumped the low one's shards"
        assert later.request_counts is not None and later.request_counts.completed < 96
        wait_batch(client, low, {"completed"}, timeout_s=180)


def test_sigterm_hands_back_every_shard_a_default_worker_holds(
    stack_parts: dict[str, Any],
) -> None:
    with fast_stack(**stack_parts, **SMALL_ENGINE) as stack:  # type: ignore[arg-type]
        lines = long_lines("s", 6 * 8, max_tokens=24)
        batch_id = submit(stack, lines)
        worker = stack.start_worker(concurrency=None)
        deadline = time.monotonic() + 60
        while stats(stack, worker).get("intake_shards_held", 0) < 2:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
        worker.stop()  # SIGTERM: Celery's warm shutdown
        assert worker.process.returncode == 0, worker.log_tail()
        stack.start_worker(concurrency=None)
        client = stack.client()
        batch = wait_batch(client, batch_id, {"completed", "failed"}, timeout_s=180)
        assert batch.status == "completed", batch
        outputs, errors = result_lines(client, batch)
        assert_each_once([line["custom_id"] for line in lines], outputs, errors)
        assert not errors
