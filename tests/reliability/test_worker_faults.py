"""Worker processes killed, stopped, fed duplicates and broken engines: nothing lost or doubled.

tests/worker/test_redelivery.py covers one SIGKILL; these go further (three kills in one
batch, a warm shutdown, duplicate messages, an engine that raises).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from infra.harness.batches import chat_line, result_lines, wait_batch
from infra.harness.service import MODEL
from infra.harness.workers import WorkerProcess, worker_stats
from jobs.connections import open_dispatcher
from tests.reliability.conftest import fast_stack, long_lines, submit
from tests.worker.conftest import Stack
from tests.worker.service import assert_each_once

pytestmark = pytest.mark.slow


def wait_submitted(stack: Stack, worker: WorkerProcess, at_least: int = 1) -> None:
    """Until the worker's engine has requests in flight (stats are per worker process)."""
    deadline = time.monotonic() + 60
    while (
        worker_stats(stack.redis, stack.settings.redis.key_prefix, worker.name).get(
            "num_submitted", 0
        )
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
    dispatcher = open_dispatcher(settings)
    try:
        for index in range(len(lines) // settings.limits.shard_size):
            for _ in range(2):  # each shard now has three messages on the queue
                dispatcher.dispatch(batch_id, index, priority=0, model=MODEL)
    finally:
        dispatcher.close()
    stack.start_worker(concurrency=4)
    assert_complete(stack, batch_id, [line["custom_id"] for line in lines])
    usage = client.batches.retrieve(batch_id).usage
    assert usage is not None and usage.output_tokens == 8 * len(lines), "tokens counted once"


def shard_hash(stack: Stack, name: str, batch_id: str) -> dict[int, str]:
    raw: dict[Any, Any] = stack.redis.hgetall(
        f"{stack.settings.redis.key_prefix}:{name}:{batch_id}"
    )
    return {int(index): value for index, value in raw.items()}


def test_a_sigkilled_workers_shards_run_again_without_waiting_the_visibility_timeout(
    stack_parts: dict[str, object],
) -> None:
    """The broker's visibility timeout at its default (an hour), and the dead worker's
    unacked records deleted (as a stale duplicate's ack does, kombu #1800): only the lapsed
    leases of the dead runs bring their shards back. The shards the dead worker never
    started stay queued, are not resent, and run from their one message."""
    defaults = {"visibility_timeout_s": 3600, "unacked_restore_interval_s": 60}
    with fast_stack(**stack_parts, **defaults) as live:  # type: ignore[arg-type]
        lines = long_lines("v", 48)  # 6 shards; a worker of 2 threads holds 2 of them
        batch_id = submit(live, lines)
        first = live.start_worker(concurrency=2)
        wait_submitted(live, first)
        first.kill()
        killed_at = time.monotonic()
        broker = live.settings.redis.resolved_broker_key_prefix
        assert live.redis.delete(f"{broker}unacked", f"{broker}unacked_index") == 2
        dead_runs = set(shard_hash(live, "shard_running", batch_id))
        assert dead_runs, "the killed worker was running shards"

        live.start_worker(concurrency=2)
        while not shard_hash(live, "shard_resends", batch_id):
            assert time.monotonic() - killed_at < 60, "no resend within a minute of the kill"
            time.sleep(0.1)
        resent_after_s = time.monotonic() - killed_at
        assert_complete(live, batch_id, [line["custom_id"] for line in lines])
        resends = shard_hash(live, "shard_resends", batch_id)
        assert set(resends) == dead_runs, "exactly the dead runs' shards are resent"
        assert set(resends.values()) == {"1"}, "each once"
        # lease 6 s + sweep every 2 s + a worker start on a shared CPU
        assert resent_after_s < 45, resent_after_s
        print(f"first resend {resent_after_s:.1f} s after the kill; resent {sorted(resends)}")


def wait_shard_count(stack: Stack, batch_id: str, at_least: int, worker: WorkerProcess) -> None:
    """Until shard 0's live ``completed`` count (jobs/state/shard_ledger.py) reaches
    ``at_least``."""
    deadline = time.monotonic() + 120
    key = f"{stack.settings.redis.key_prefix}:shard_counts:{batch_id}"
    client: Any = stack.redis
    while int(client.hget(key, "0:completed") or 0) < at_least:
        assert worker.process.poll() is None, worker.log_tail()
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.02)


def test_a_rerun_computes_only_the_lines_its_killed_run_had_not_finished(
    stack_parts: dict[str, object],
) -> None:
    """One 20-line shard on an engine of 2 sequences (lines finish two by two), committing
    every line: SIGKILL once 18 lines are counted (90 %); the rerun runs only the 2 that
    were in the engine. Lines of 64 tokens leave the kill 64 steps to land in, even on a
    fast machine. (benchmarks/checkpoint_rerun.py measures the shipped settings.)"""
    knobs = {"shard_size": 20, "engine_max_num_seqs": 2, "shard_commit_lines": 1}
    with fast_stack(**stack_parts, **knobs) as live:  # type: ignore[arg-type]
        lines = long_lines("p", 20, max_tokens=64)
        batch_id = submit(live, lines)
        first = live.start_worker(concurrency=1)
        wait_shard_count(live, batch_id, 18, first)
        first.kill()
        second = live.start_worker(concurrency=1)
        assert_complete(live, batch_id, [line["custom_id"] for line in lines])
        usage = live.client().batches.retrieve(batch_id).usage
        assert usage is not None and usage.output_tokens == 64 * 20, "tokens counted once"
        time.sleep(1)  # the second worker's last stats
        rerun = worker_stats(live.redis, live.settings.redis.key_prefix, second.name)
        assert 1 <= rerun["num_submitted"] <= 2, rerun
        share = rerun["num_batched_tokens"] / (usage.input_tokens + usage.output_tokens)
        print(f"rerun: {rerun['num_submitted']:.0f} of 20 lines, {share:.1%} of the tokens")
        assert share <= 0.15


def test_sigterm_hands_back_a_long_shard_after_the_grace_keeping_its_finished_lines(
    stack_parts: dict[str, object],
) -> None:
    """One 48-line shard of 48 tokens a line on an engine of 2 sequences (about 8 s of work
    on a quiet machine, far more than the grace), a grace of 1 s: the worker stops within
    seconds, not when the shard is done, and the next worker runs only the lines the first
    had not finished."""
    knobs = {
        "shard_size": 48,
        "engine_max_num_seqs": 2,
        "shard_commit_lines": 1,
        "shutdown_grace_s": 1,
    }
    with fast_stack(**stack_parts, **knobs) as live:  # type: ignore[arg-type]
        lines = long_lines("g", 48, max_tokens=48)
        batch_id = submit(live, lines)
        first = live.start_worker(concurrency=1)
        wait_shard_count(live, batch_id, 8, first)
        stopping = time.monotonic()
        first.stop()  # SIGTERM
        stopped_after_s = time.monotonic() - stopping
        assert first.process.returncode == 0, first.log_tail()
        assert "Retry in 0s: ShardInterrupted" in first.log_tail(100_000), "handed back at once"
        second = live.start_worker(concurrency=1)
        assert_complete(live, batch_id, [line["custom_id"] for line in lines])
        time.sleep(1)  # the second worker's last stats
        rerun = worker_stats(live.redis, live.settings.redis.key_prefix, second.name)
        print(f"stopped {stopped_after_s:.1f} s after SIGTERM; rerun {rerun['num_submitted']:.0f}")
        assert stopped_after_s < 15, stopped_after_s
        assert 1 <= rerun["num_submitted"] <= 48 - 8, rerun


@pytest.mark.parametrize("crash_at", ["admit", "step"])
def test_engine_exception_fails_only_the_marked_lines(
    stack_parts: dict[str, object], crash_at: str
) -> None:
    """Marked requests break the engine when admitted, or break every step they are in
    (so each failed step also held innocent requests, of this batch and the clean one)."""
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
        stats = worker_stats(live.redis, live.settings.redis.key_prefix, worker.name)
        if crash_at == "step":
            assert stats["num_culprits"] == 4, stats
            assert stats["num_failed_steps"] >= 4, stats
