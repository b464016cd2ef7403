"""Worker stats where operators look: the Redis hash and Prometheus, engine load included."""

from __future__ import annotations

import secrets
import urllib.request

import redis

from engine.stats import EngineStats
from infra.harness.redis_server import free_port
from infra.harness.service import REDIS_URL
from worker.engine_load import EngineLoad
from worker.intake import ShardIntake
from worker.monitoring import StatsPublisher


def test_occupancy_waste_and_intake_reach_the_stats_hash_and_prometheus() -> None:
    load = EngineLoad(capacity=4)
    load.idle_began(now=0.0)
    load.queue_seen(3, now=0.5)
    load.idle_ended(now=1.0)
    load.step(1.0, 2.0, 2)
    intake = ShardIntake(capacity=4, max_shards=8)
    intake.received("t", is_shard=True)
    intake.sized("t", 3)

    speculation = EngineStats(num_draft_tokens=8, num_accepted_tokens=6, num_spec_verifications=2)

    def snapshot() -> dict[str, float]:
        spec = {k: speculation.as_dict()[k] for k in ("num_draft_tokens", "acceptance_rate")}
        return {**load.snapshot(), **intake.snapshot(), **spec}

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    key = f"test-monitoring-{secrets.token_hex(4)}:workers:w"
    port = free_port()
    publisher = StatsPublisher(
        snapshot, client, key, interval_s=60, metrics_port=port, model="m", device="cpu"
    )
    publisher.start()
    try:
        publisher.publish()
        published = client.hgetall(key)
        assert float(published["engine_idle_with_queued_work_s"]) == 1.0
        assert float(published["engine_request_seconds"]) == 2.0
        assert float(published["intake_outstanding"]) == 3
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert 'kvbatch_worker_engine_occupancy{device="cpu",model="m"} ' in text
        assert 'kvbatch_worker_engine_occupancy_now{device="cpu",model="m"} 0.5' in text
        assert (
            'kvbatch_worker_engine_idle_with_queued_work_s_total{device="cpu",model="m"} 1.0'
            in text
        )
        assert 'kvbatch_worker_engine_request_seconds_total{device="cpu",model="m"} 2.0' in text
        assert 'kvbatch_worker_engine_capacity{device="cpu",model="m"} 4.0' in text
        assert 'kvbatch_worker_intake_watermark{device="cpu",model="m"} 7.0' in text
        assert 'kvbatch_worker_num_draft_tokens_total{device="cpu",model="m"} 8.0' in text
        assert 'kvbatch_worker_acceptance_rate{device="cpu",model="m"} 0.75' in text
    finally:
        publisher.close()
        client.delete(key)
