"""The shard intake's gate and the engine-load meter (no engine), and the queue probe."""

from __future__ import annotations

import secrets

import pytest
import redis

from infra.harness.service import REDIS_URL
from jobs.pipeline.dispatch import ShardDispatcher
from jobs.pipeline.routing import ModelRouter
from jobs.settings_sections import PRIORITY_STEPS
from worker.engine_load import EngineLoad
from worker.intake import ShardIntake
from worker.queue_probe import QueueProbe


def test_takes_shards_until_capacity_plus_one_shard_then_reopens_as_lines_finish() -> None:
    opened: list[int] = []
    intake = ShardIntake(capacity=8, max_shards=16, on_open=lambda: opened.append(1))
    assert intake.is_open() and intake.watermark == 8  # nothing read yet: no reserve
    intake.received("a", is_shard=True)
    assert not intake.is_open(), "an unread shard counts as a whole capacity at first"
    intake.sized("a", 4)
    assert intake.is_open() and intake.watermark == 8 + 4 and opened == [1]
    intake.received("b", is_shard=True)  # estimated at 4 lines: 8 < 12
    assert intake.is_open()
    intake.received("c", is_shard=True)  # 12: full
    assert not intake.is_open()
    intake.sized("b", 4)
    intake.sized("c", 4)
    assert not intake.is_open() and intake.snapshot()["intake_outstanding"] == 12
    intake.answered("a")
    assert intake.is_open(), "one line answered: below the watermark again"
    assert intake.snapshot()["intake_shards_held"] == 3


def test_only_a_fetch_closes_the_gate() -> None:
    """A shard larger than estimated arrives while a fetch may be in flight: the gate stays
    open (closing it could strand a popped message in the process) until the next fetch."""
    intake = ShardIntake(capacity=8, max_shards=16)
    intake.received("a", is_shard=True)
    intake.sized("a", 2)
    intake.received("b", is_shard=True)
    assert intake.is_open()
    intake.sized("b", 50)
    assert intake.is_open()
    intake.received("expiry", is_shard=False)  # any fetch re-decides
    assert not intake.is_open()


def test_the_reserve_is_capped_at_capacity_so_big_shards_are_taken_one_at_a_time() -> None:
    intake = ShardIntake(capacity=256, max_shards=64)
    intake.received("a", is_shard=True)
    intake.sized("a", 512)
    assert intake.watermark == 512
    intake.received("noop", is_shard=False)
    assert not intake.is_open(), "512 outstanding: the second 512-line shard stays in Redis"


def test_a_shard_that_ends_releases_its_lines_and_thread() -> None:
    intake = ShardIntake(capacity=4, max_shards=2)
    with intake.ticket("a") as ticket:
        intake.received("a", is_shard=True)
        ticket.sized(1)
        intake.received("b", is_shard=True)
        assert not intake.is_open(), "two shards held: every thread is busy"
        ticket.answered(5)  # more than it has: clamped
        assert intake.snapshot()["intake_outstanding"] == 0
    intake.sized("b", 1)
    assert intake.is_open()
    assert intake.snapshot() == {
        "intake_open": 1,
        "intake_watermark": 5,
        "intake_outstanding": 1,
        "intake_shards_held": 1,
        "intake_shards_taken": 2,
    }


def test_a_retry_waiting_for_its_countdown_does_not_hold_the_gate() -> None:
    intake = ShardIntake(capacity=4, max_shards=8)
    intake.received("retry", is_shard=False)  # what the signal reports for an ETA message
    assert intake.is_open() and intake.snapshot()["intake_shards_held"] == 0


def test_occupancy_is_requests_over_capacity_across_steps_and_idle_spells() -> None:
    load = EngineLoad(capacity=4)
    load.idle_began(now=0.0)
    load.idle_ended(now=1.0)
    load.step(1.0, 2.0, 4)  # full for a second
    load.step(2.0, 3.0, 2)  # half full for a second
    stats = load.snapshot()
    assert stats["engine_busy_s"] == 2.0 and stats["engine_idle_s"] == 1.0
    assert stats["engine_request_seconds"] == 6.0
    assert stats["engine_occupancy"] == pytest.approx(6.0 / (4 * 3.0))
    assert stats["engine_occupancy_now"] == 0.5
    assert stats["engine_idle_with_queued_work_s"] == 0.0


def test_idle_time_counts_as_waste_only_while_the_queue_holds_shards() -> None:
    load = EngineLoad(capacity=4)
    load.idle_began(now=10.0)
    assert load.idle.is_set()
    load.queue_seen(0, now=10.1)
    load.queue_seen(2, now=10.2)  # counted from the probe before: 0.1
    load.queue_seen(2, now=10.3)  # 0.1 more
    load.idle_ended(now=10.35)  # and up to the end of the spell: 0.05
    assert not load.idle.is_set()
    load.queue_seen(5, now=10.4)  # busy: not waste
    load.idle_began(now=11.0)
    load.queue_seen(1, now=11.5)  # from the start of the spell
    load.idle_ended(now=11.5)
    stats = load.snapshot()
    assert stats["engine_idle_with_queued_work_s"] == pytest.approx(0.25 + 0.5)
    assert stats["engine_idle_s"] == pytest.approx(0.35 + 0.5)


def test_queue_probe_counts_every_priority_list_under_the_broker_key_prefix() -> None:
    queue = f"test-probe-{secrets.token_hex(4)}"
    options = {"priority_steps": PRIORITY_STEPS, "global_keyprefix": f"{queue}:broker:"}
    router = ModelRouter(queue)
    probe = QueueProbe(REDIS_URL, router.queue_of("m"), options)
    dispatcher = ShardDispatcher(REDIS_URL, router, options)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert probe() == 0
        for index, priority in enumerate([0, 5, 9]):
            dispatcher.dispatch("batch_ab", index, priority, "m")
        assert probe() == 3
    finally:
        probe.close()
        dispatcher.close()
        for key in client.scan_iter(match=f"{queue}:broker:*"):
            client.delete(key)
