"""Live fixtures for the API tests: a real uvicorn server, the real Redis, real S3 (moto).

Every test session uses its own Redis key prefix and broker key prefix and deletes them at
the end, so it never touches another session's data.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from infra.harness.service import REDIS_URL, LiveServer, make_settings, moto_s3, run_server


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
    with moto_s3() as endpoint:
        yield endpoint


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
