"""The service's dependencies fail under a running batch: Redis restarts, S3 goes away, the
API process dies. Each time the batch completes with every ``custom_id`` exactly once."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
import pytest
import redis

from infra.harness.redis_server import RedisServer
from infra.harness.service import ApiProcess, LiveServer, make_settings
from tests.reliability.conftest import FAST_WORKER, fast_stack, long_lines, submit
from tests.reliability.processes import TcpProxy
from tests.reliability.test_worker_faults import assert_complete, wait_submitted
from tests.worker.conftest import Stack

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("ride_out_s", [30.0, 0.5], ids=["ridden-out", "shards-fail"])
def test_redis_restart_mid_batch(
    stack_parts: dict[str, Any], own_redis: RedisServer, ride_out_s: float
) -> None:
    """Redis restarts (AOF on) while two shards run.

    ``ridden-out``: the shards' Redis commands wait for Redis and the shards finish, though
    Redis then restarts twice more within a few seconds (Celery #8030, #9054, #10205: a
    worker whose consumer stopped after quick reconnects would never run the second batch).
    ``shards-fail``: the worker gives up on Redis after 0.5 s, so both shard tasks fail
    while the broker is down too; their messages must not be dropped (Celery's own retry
    would reject them, which deletes them on Redis) but come back and run again.
    """
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    parts = {**stack_parts, "client": client, "redis_url": own_redis.url}
    with fast_stack(**parts, redis_ride_out_s=ride_out_s) as stack:
        lines = long_lines("r", 48)
        batch_id = submit(stack, lines)
        worker = stack.start_worker(concurrency=2)
        wait_submitted(stack, worker)

        own_redis.stop()  # SIGTERM: Redis writes its AOF and exits, as on a restart
        down = httpx.get(
            f"{stack.server.url}/v1/batches/{batch_id}",
            headers={"Authorization": "Bearer key-alpha"},
            timeout=10,
        )
        time.sleep(8)  # longer than the shards' remaining work: their results meet no Redis
        own_redis.start()
        if ride_out_s > 1:
            for _ in range(2):  # two more restarts, a second or so apart
                time.sleep(1)
                own_redis.stop()
                time.sleep(1)
                own_redis.start()
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "service_unavailable"

        assert_complete(stack, batch_id, [line["custom_id"] for line in lines])
        assert worker.process.poll() is None, "the worker reconnected instead of dying"
        more = long_lines("r2", 8, max_tokens=4)
        assert_complete(stack, submit(stack, more), [line["custom_id"] for line in more])
        requeued = "requeueing" in worker.log_tail(500_000)
        assert requeued == (ride_out_s < 1), "shards failed and came back only when meant to"
    client.close()


def test_s3_outage_during_result_writes(stack_parts: dict[str, Any]) -> None:
    proxy = TcpProxy(int(stack_parts["s3_url"].rsplit(":", 1)[1]))
    proxy.start()
    # Two deliveries at most: the outage outlasts several retries (4 s apart here), and runs
    # that failed on storage must not count towards failing the shard's lines.
    with fast_stack(**{**stack_parts, "s3_url": proxy.url}, max_shard_deliveries=2) as stack:
        lines = long_lines("s", 32)
        batch_id = submit(stack, lines)
        worker = stack.start_worker(concurrency=2)
        wait_submitted(stack, worker)
        # Longer than boto3's own retries (5 attempts, a few seconds), so the shard task
        # itself must fail and come back later.
        proxy.cut()
        time.sleep(15)
        proxy.start()

        assert_complete(stack, batch_id, [line["custom_id"] for line in lines])
        log = worker.log_tail(200_000)
        assert "retry: Retry in" in log, "the shard task retried after boto3 gave up"
    proxy.cut()


class Poller:
    """Clients polling a batch and the file list from threads, counting what went wrong."""

    def __init__(self, url: str, batch_id: str, num_threads: int = 4) -> None:
        self.url, self.batch_id = url, batch_id
        self.statuses: list[str] = []
        self.failures = 0
        self.server_errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll) for _ in range(num_threads)]

    def __enter__(self) -> Poller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def sees(self, status: str, timeout_s: float = 15.0) -> bool:
        """Whether the clients read ``status`` within ``timeout_s``. After a restart they need
        a moment to reconnect, and a batch may finish while the API is down: then the call
        that saw it complete can come before any poller's first answer from the new API."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.statuses and self.statuses[-1] == status:
                return True
            time.sleep(0.05)
        return False

    def _poll(self) -> None:
        headers = {"Authorization": "Bearer key-alpha"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=5) as http:
            while not self._stop.is_set():
                try:
                    batch = http.get(f"/v1/batches/{self.batch_id}")
                    files = http.get("/v1/files")
                except httpx.TransportError:
                    self.failures += 1  # the API is down: connection refused
                    time.sleep(0.1)
                    continue
                self.server_errors += (batch.status_code >= 500) + (files.status_code >= 500)
                if batch.status_code == 200:
                    self.statuses.append(batch.json()["status"])
                time.sleep(0.05)


def test_api_restart_while_clients_poll(stack_parts: dict[str, Any]) -> None:
    settings = make_settings(
        "s3", stack_parts["prefix"], stack_parts["tmp"], stack_parts["s3_url"], shard_size=8
    )
    api = ApiProcess(settings, stack_parts["tmp"] / "api.log")
    api.start()
    worker_settings = {
        **FAST_WORKER,
        "beat_schedule_path": stack_parts["tmp"] / "beat-schedule",
        "worker_model": stack_parts["model"],
    }
    stack = Stack(
        LiveServer(api.url, settings),
        settings,
        stack_parts["client"],
        stack_parts["tmp"],
        worker_settings,
    )
    try:
        lines = long_lines("a", 40)
        batch_id = submit(stack, lines)
        before = stack.client().batches.retrieve(batch_id)
        worker = stack.start_worker(concurrency=2)
        with Poller(api.url, batch_id) as poller:
            wait_submitted(stack, worker)
            api.kill()
            time.sleep(2)
            api.start()
            assert_complete(stack, batch_id, [line["custom_id"] for line in lines])
            resumed = poller.sees("completed")
        after = stack.client().batches.retrieve(batch_id)
        assert (after.created_at, after.input_file_id) == (before.created_at, before.input_file_id)
        assert before.input_file_id in [f.id for f in stack.client().files.list()]
        assert poller.server_errors == 0
        assert poller.failures > 0, "the pollers saw the API go down"
        assert resumed, "polling resumed after the restart"
    finally:
        stack.stop_workers()
        api.kill()


def take_shard_message(stack: Stack, batch_id: str, index: int) -> bool:
    """Delete shard ``index``'s message from its queue in Redis, as a Redis restart between
    a worker's ``BRPOP`` and its unacked record does (jobs/pipeline/watchdog.py)."""
    prefix = stack.settings.redis.broker_key_prefix
    client: Any = stack.redis
    for key in client.scan_iter(match=f"{prefix}*{stack.settings.redis.shard_queue}*"):
        if client.type(key) != "list":
            continue
        for raw in client.lrange(key, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            if body[0][0] == {"batch_id": batch_id, "shard_index": index}:
                return bool(client.lrem(key, 1, raw))
    return False


def test_a_shard_message_lost_by_the_broker_is_sent_again(stack: Stack) -> None:
    lines = long_lines("m", 24, max_tokens=4)
    batch_id = submit(stack, lines)
    deadline = time.monotonic() + 30
    while not take_shard_message(stack, batch_id, 1):  # once intake has sent the messages
        assert time.monotonic() < deadline, "shard 1's message never reached the queue"
        time.sleep(0.05)
    worker = stack.start_worker(concurrency=2)
    assert_complete(stack, batch_id, [line["custom_id"] for line in lines])
    assert f"shard {batch_id}/1 silent for" in worker.log_tail(200_000)


def test_a_worker_whose_redis_is_down_logs_one_line_per_retry(
    stack_parts: dict[str, Any], own_redis: RedisServer
) -> None:
    """Redis away for a while: the worker's retry loops (stats, Celery's consumer) each log a
    line per cycle saying Redis is unreachable, never a traceback; the worker lives on."""
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    parts = {**stack_parts, "client": client, "redis_url": own_redis.url}
    with fast_stack(**parts, redis_ride_out_s=0.5) as stack:
        worker = stack.start_worker(concurrency=1)
        before = len(worker.log_tail(10**8))
        own_redis.stop()
        time.sleep(8)
        during = worker.log_tail(10**8)[before:]
        own_redis.start()
        assert "Traceback" not in during, during
        assert during.count("Redis unreachable") >= 3, during  # stats every 0.3 s + ride-out
        assert worker.process.poll() is None, "the worker waits for Redis instead of dying"
        lines = long_lines("back", 2, max_tokens=2)
        assert_complete(stack, submit(stack, lines), [line["custom_id"] for line in lines])
    client.close()
