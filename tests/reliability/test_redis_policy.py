"""The API and the workers refuse a Redis that may evict keys, unless told to accept it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from infra.harness.redis_server import RedisServer
from infra.harness.service import ApiProcess, make_settings
from infra.harness.workers import WorkerProcess, service_env

pytestmark = pytest.mark.slow

REFUSAL = "maxmemory-policy 'allkeys-lru'"


def test_api_and_worker_refuse_an_evicting_redis(own_redis: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    url = own_redis.url
    settings = make_settings("local", "kvbatch-test-policy", tmp_path, None, redis_url=url)

    worker = WorkerProcess(service_env(settings), "policy@test", tmp_path / "worker.log")
    with pytest.raises(AssertionError, match=REFUSAL):
        ApiProcess(settings, tmp_path / "api.log").start()
    deadline = time.monotonic() + 120
    while worker.process.poll() is None:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    worker.stop()
    assert worker.process.returncode != 0
    assert REFUSAL in worker.log_path.read_text(errors="replace"), worker.log_tail()

    allowed = settings.updated(allow_evicting_redis=True)
    api = ApiProcess(allowed, tmp_path / "api-allowed.log")
    api.start()  # told to accept the risk: it serves
    try:
        assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200
    finally:
        api.kill()
