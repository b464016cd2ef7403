"""What an operator sees on ``/metrics`` while a batch waits and after it ran, through the real
stack (API, its own Redis, S3, a worker process), and the key space a deployment occupies."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from infra.harness.batches import chat_line, jsonl, wait_batch
from infra.harness.redis_server import RedisServer, free_port
from infra.harness.service import KEYS, MODEL, make_settings
from infra.harness.stack import running_stack
from tests.reliability.conftest import FAST_WORKER

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_show_the_queue_the_batches_and_the_lines(
    own_redis: RedisServer, tmp_path: Path, s3_endpoint: str, fast_chat_model: Path
) -> None:
    prefix = f"metrics-{secrets.token_hex(3)}"
    # No KVBATCH_BROKER_KEY_PREFIX: the broker's keys must still live under the key prefix.
    settings = make_settings(
        "s3", prefix, tmp_path, s3_endpoint, shard_size=8, redis_url=own_redis.url,
        broker_key_prefix=None,
    )  # fmt: skip
    tenant = KEYS["key-alpha"]
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    metrics_port = free_port()
    worker_settings = {
        **FAST_WORKER,
        "beat_schedule_path": tmp_path / "beat-schedule",
        "worker_model": fast_chat_model,
        "metrics_port": metrics_port,
    }
    with running_stack(settings, client, tmp_path, worker_settings) as stack:
        api = stack.client()
        lines = [chat_line(f"m-{i}", f"Number {i}.", max_tokens=3) for i in range(16)]
        lines[9]["body"]["temperature"] = 5  # a 400 line: counted as failed
        file = api.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = api.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"priority": "3"},
        )
        wait_batch(api, batch.id, {"in_progress"}, timeout_s=30)
        time.sleep(1.2)
        waiting = scrape(f"{stack.server.url}/metrics")
        queue = settings.model_router().queue_of(MODEL)
        assert value(waiting, "kvbatch_queued_shards", queue=queue, priority="3") == 2
        assert value(waiting, "kvbatch_queued_shards", queue=queue, priority="5") == 0
        assert value(waiting, "kvbatch_oldest_queued_shard_age_seconds", queue=queue) > 1
        assert value(waiting, "kvbatch_batches", status="in_progress") == 1

        worker = stack.start_worker(concurrency=2)
        done = wait_batch(api, batch.id, {"completed", "failed"}, timeout_s=120)
        assert done.status == "completed", done
        after = scrape(f"{stack.server.url}/metrics")
        assert value(after, "kvbatch_queued_shards", queue=queue, priority="3") == 0
        assert value(after, "kvbatch_batches", status="completed") == 1
        assert value(after, "kvbatch_batches", status="in_progress") == 0
        model = lines[0]["body"]["model"]
        by = {"model": model, "tenant": tenant}
        assert value(after, "kvbatch_lines_total", **by, outcome="completed") == 15
        assert value(after, "kvbatch_lines_total", **by, outcome="failed") == 1
        assert done.usage is not None
        tokens_out = value(after, "kvbatch_tokens_total", **by, kind="output")
        assert tokens_out == done.usage.output_tokens > 0
        assert value(after, "kvbatch_tokens_total", **by, kind="input") == done.usage.input_tokens
        assert value(after, "kvbatch_batches_finished_total", **by, status="completed") == 1

        engine = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        labels = {"model": MODEL, "device": "cpu"}  # the served name
        assert value(engine, "kvbatch_worker_num_finished_requests_total", **labels) >= 15
        listening = [
            c.laddr
            for c in psutil.Process(worker.process.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == metrics_port
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    strays = [
        k for k in client.scan_iter(count=1000) if not k.startswith(settings.redis.key_prefix)
    ]
    assert not strays, f"keys outside the deployment's prefix: {strays[:10]}"
    assert any(k.startswith(f"{settings.redis.key_prefix}:broker:") for k in client.scan_iter())
    client.close()
