"""Worker processes killed, stopped, fed duplicates and broken engines: nothing lost or doubled.

tests/worker/test_redelivery.py covers one SIGKILL; these go further (three kills in one
batch, a warm shutdown, duplicate messages, an engine that raises).
"""

from __future__ import annotations

import time

import pytest

from infra.harness.batches import chat_line, result_lines, wait_batch
from infra.harness.workers import WorkerProcess, worker_stats
from jobs.pipeline.dispatch import ShardDispatcher
from tests.reliability.conftest import long_lines, submit
from tests.worker.conftest import Stack
from tests.worker.service import assert_each_once

pytestmark = pytest.mark.slow


def wait_submitted(stack: Stack, worker: WorkerProcess, at_least: int = 1) -> None:
    """Until the worker's engine has requests in flight (stats are per worker process)."""
    deadline = time.monotonic() + 60
    while (
        worker_stats(stack.redis, stack.settings.key_prefix, worker.name).get("num_submitted", 0)
        < at_least
    ):
        assert worker.process.poll() is None, worker.log_tail()
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.05)


def assert_complete(stack: Stack, batch_id: str, custom_ids: list[str]) -> None:
    client = stack.client()
    batch = wait_batch(client, batch_id, {"completed", "failed"}, timeout_s=120)
    assert batch.status == "completed", batch
    outputs, errors = result_lines(client, batch)
    assert_each_once(custom_ids, outputs, errors)
    assert errors == [], errors[:3]
    counts = batch.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (len(custom_ids), len(outputs), 0)
    assert [line["custom_id"] for line in outputs] == custom_ids, "output in input order"


def test_three_sigkills_in_one_batch(stack: Stack) -> None:
    lines = long_lines("k", 48)
    batch_id = submit(stack, lines)
    for _ in range(3):
        worker = stack.start_worker(concurrency=2)
        wait_submitted(stack, worker)
        worker.kill()
    at_last_kill = stack.client().batches.retrieve(batch_id)
    assert at_last_kill.status == "in_progress", at_last_kill

    stack.start_worker(concurrency=2)
    assert_complete(stack, batch_id, [line["custom_id"] for line in lines])


def test_sigterm_finishes_or_requeues_the_shards_in_flight(stack: Stack) -> None:
    lines = long_lines("t", 40)
    batch_id = submit(stack, lines)
    worker = stack.start_worker(concurrency=2)
    wait_submitted(stack, worker)
    worker.stop()  # SIGTERM: Celery's warm shutdown
    assert worker.process.returncode == 0, worker.log_tail()
    stack.start_worker(concurrency=2)
    assert_complete(stack, batch_id, [line["custom_id"] for line in lines])


def test_duplicate_shard_messages_write_each_line_once(stack: Stack) -> None:
    lines = long_lines("d", 32, max_tokens=8)
    batch_id = submit(stack, lines)
    client = stack.client()
    while client.batches.retrieve(batch_id).status == "validating":
        time.sleep(0.05)
    settings = stack.settings
    dispatcher = ShardDispatcher(
        settings.resolved_broker_url, settings.shard_queue, settings.broker_transport_options()
    )
    try:
        for index in range(len(lines) // settings.shard_size):
            for _ in range(2):  # each shard now has three messages on the queue
                dispatcher.dispatch(batch_id, index, priority=0)
    finally:
        dispatcher.close()
    stack.start_worker(concurrency=4)
    assert_complete(stack, batch_id, [line["custom_id"] for line in lines])
    usage = client.batches.retrieve(batch_id).usage
    assert usage is not None and usage.output_tokens == 8 * len(lines), "tokens counted once"


@pytest.mark.parametrize("crash_at", ["admit", "step"])
def test_engine_exception_fails_only_the_marked_lines(
    stack_parts: dict[str, object], crash_at: str
) -> None:
    """Marked requests break the engine when admitted, or break every step they are in
    (so each failed step also held innocent requests, of this batch and the clean one)."""
    from tests.reliability.conftest import fast_stack

    marker = "KVBATCH-TEST-CRASH"
    faults = {"fault_crash_marker": marker, "fault_crash_at": crash_at}
    with fast_stack(**stack_parts, **faults) as live:  # type: ignore[arg-type]
        worker = live.start_worker(concurrency=4)
        poisoned = [
            chat_line(f"p-{i}", f"{marker} {i}" if i % 3 == 0 else f"Fine {i}.", max_tokens=6)
            for i in range(12)
        ]
        clean = long_lines("c", 12, max_tokens=6)
        poisoned_id, clean_id = submit(live, poisoned), submit(live, clean)

        client = live.client()
        batch = wait_batch(client, poisoned_id, {"completed", "failed"}, timeout_s=120)
        assert batch.status == "completed", batch
        outputs, errors = result_lines(client, batch)
        assert_each_once([line["custom_id"] for line in poisoned], outputs, errors)
        assert [e["custom_id"] for e in errors] == [f"p-{i}" for i in range(0, 12, 3)]
        assert {e["error"]["code"] for e in errors} == {"engine_error"}
        assert all("injected engine fault" in e["error"]["message"] for e in errors)
        counts = batch.request_counts
        assert counts is not None and (counts.completed, counts.failed) == (8, 4)

        assert_complete(live, clean_id, [line["custom_id"] for line in clean])
        after = long_lines("after", 4, max_tokens=4)
        assert_complete(live, submit(live, after), [line["custom_id"] for line in after])
        assert worker.process.poll() is None, "the worker stays up"
        stats = worker_stats(live.redis, live.settings.key_prefix, worker.name)
        if crash_at == "step":
            assert stats["num_culprits"] == 4, stats
            assert stats["num_failed_steps"] >= 4, stats
