"""Live fixtures for the API tests: a real uvicorn server, the real Redis, real S3 (moto).

Every test session uses its own Redis key prefix and broker key prefix and deletes them at
the end, so it never touches another session's data.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import uvicorn
from moto.server import ThreadedMotoServer
from openai import OpenAI

from api.app import create_app
from api.settings import Settings

KEYS = {"key-alpha": "tenant-a", "key-beta": "tenant-b"}
MODEL = "smollm2-135m-instruct"
REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class LiveServer:
    url: str
    settings: Settings

    def client(self, key: str = "key-alpha") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def session_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"kvbatch-test-{secrets.token_hex(4)}"
    yield prefix
    for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
        redis_client.delete(key)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_settings(
    backend: str, prefix: str, tmp: Path, s3_endpoint: str | None, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "api_keys": KEYS,
        "models": {MODEL: "models/smollm2-135m-instruct"},
        "redis_url": REDIS_URL,
        "key_prefix": f"{prefix}:{backend}",
        "broker_key_prefix": f"{prefix}:broker:{backend}:",
        "shard_queue": f"{prefix}.shards.{backend}",
        "storage_backend": backend,
        "storage_dir": tmp / "storage",
        "s3_bucket": f"kvbatch-{backend}-{secrets.token_hex(4)}",
        "s3_endpoint_url": s3_endpoint,
        "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing",
        "s3_create_bucket": True,
        "shard_size": 4,
        **overrides,
    }
    return Settings.model_validate(values)


@contextmanager
def run_server(settings: Settings) -> Iterator[LiveServer]:
    """Serve ``create_app(settings)`` with uvicorn on a free port in a background thread."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture(scope="session", params=["local", "s3"])
def live(
    request: pytest.FixtureRequest,
    session_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    backend: str = request.param
    endpoint = request.getfixturevalue("s3_endpoint") if backend == "s3" else None
    tmp = tmp_path_factory.mktemp(f"api-{backend}")
    with run_server(make_settings(backend, session_prefix, tmp, endpoint)) as server:
        yield server


@pytest.fixture(scope="session")
def live_local(
    session_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A local-storage server with small limits, for tests that probe the bounds."""
    tmp = tmp_path_factory.mktemp("api-limits")
    settings = make_settings(
        "local",
        f"{session_prefix}:limits",
        tmp,
        None,
        max_requests_per_file=5,
        max_line_bytes=4096,
        max_file_bytes=200_000,
        max_json_body_bytes=20_000,
        max_n=4,
        max_tokens=512,
    )
    with run_server(settings) as server:
        yield server
