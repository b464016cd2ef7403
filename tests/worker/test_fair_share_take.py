"""A worker taking a shard refills the fair-share window at once: the next tenant's shard
reaches the broker while the shard just taken still runs, not when it ends.

The shard task runs in this process with a stand-in runtime around a real fair queue on the
real Redis (the broker is tests/jobs/test_fair_share.py's list, handing out one message).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import redis

from jobs.pipeline.fair_share import FairQueue
from tests.jobs import test_fair_share as fair_share_tests
from worker import tasks
from worker.intake import IntakeTicket, ShardIntake

Broker = fair_share_tests.Broker
client = fair_share_tests.client  # the fair-share tests' Redis client fixture


@dataclass
class Runner:
    """Runs nothing; notes what the broker held while each shard ran."""

    broker: Broker
    seen: list[list[str]] = field(default_factory=list)

    def run(self, batch_id: str, shard_index: int, ticket: IntakeTicket) -> str:
        self.seen.append([message[0] for message in self.broker.queue])
        return "completed"


class BrokenFair:
    def pump(self) -> int:
        raise redis.ConnectionError("fair-share keys unreachable")


@dataclass
class Runtime:
    """What ``run_shard`` reads of worker/runtime.py's ``WorkerRuntime``."""

    fair: FairQueue | BrokenFair
    runner: Runner
    intake: ShardIntake = field(default_factory=lambda: ShardIntake(8, 1))

    def forward_if_misrouted(self, batch_id: str, shard_index: int) -> bool:
        return False


def install(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Runtime:
    """``run_shard`` finds ``runtime`` as this process's."""
    monkeypatch.setattr(tasks, "get_runtime", lambda: runtime)
    return runtime


def take(broker: Broker) -> dict[str, object]:
    """The broker hands out its oldest message: a worker's ``run_shard`` payload."""
    batch_id, index, _ = broker.queue.pop(0)
    return {"batch_id": batch_id, "shard_index": index}


def test_taking_a_shard_releases_the_next_one_before_it_ends(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker()
    for queue in fair_share_tests.fair(client, broker, fair_share_window=1, fair_share_burst=0):
        runner = install(monkeypatch, Runtime(queue, Runner(broker))).runner
        queue.submit("tenant-a", "batch_a1", 1, priority=5)
        queue.submit("tenant-b", "batch_b1", 1, priority=5)
        assert [m[0] for m in broker.queue] == ["batch_a1"]
        assert queue.waiting(5) == {"tenant-b": 1}
        assert tasks.run_shard(take(broker)) == "completed"
        assert runner.seen == [["batch_b1"]], "b's shard waited for a's to end"


def test_a_failing_pump_never_fails_the_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker()
    runner = install(monkeypatch, Runtime(BrokenFair(), Runner(broker))).runner
    broker.send("batch_a1", 0, 5)
    assert tasks.run_shard(take(broker)) == "completed"
    assert runner.seen == [[]]
