"""``kvbatch flower`` as deployments run it: ``/metrics`` answers only with credentials."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from infra.harness.redis_server import free_port
from infra.harness.service import REDIS_URL
from tests.infra.stack_runner import isolated_env, launch


@pytest.mark.slow
def test_flower_metrics_need_the_basic_auth_credentials(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "flower.log"
    flower = launch(["flower", "--port", str(port)], isolated_env(REDIS_URL), log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthcheck", timeout=2)
                break
            except httpx.HTTPError:
                assert flower.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401
        wrong = httpx.get(f"{url}/metrics", timeout=5, auth=("admin", "wrong"))
        assert wrong.status_code == 401
        scraped = httpx.get(f"{url}/metrics", timeout=5, auth=("admin", "infra-test"))
        assert scraped.status_code == 200
        assert "flower_" in scraped.text
        assert httpx.get(f"{url}/", timeout=5).status_code == 401
    finally:
        flower.terminate()
        flower.wait(timeout=20)
