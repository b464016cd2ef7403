"""Fixtures for the fault tests: a fast chat model and live stacks built around it.

The model is a tiny random-weight Llama with SmolLM2's tokenizer and chat template, so a
chat batch crosses the real API, Redis, Celery worker processes and S3 in seconds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from infra.harness.batches import chat_line, jsonl
from infra.harness.redis_server import RedisServer
from infra.harness.service import REDIS_URL, make_settings
from infra.harness.stack import Stack, running_stack
from infra.harness.tiny_models import build_tiny_chat_model
from tests.api import conftest as api_fixtures

redis_client = api_fixtures.redis_client
session_prefix = api_fixtures.session_prefix
s3_endpoint = api_fixtures.s3_endpoint
live_local = api_fixtures.live_local

# Worker knobs that make faults visible within seconds instead of an hour.
FAST_WORKER: dict[str, object] = {
    "stats_interval_s": 0.3,
    "expiry_interval_s": 2,
    "stop_poll_s": 0.3,
    "shard_lease_s": 6,
    "unacked_restore_interval_s": 1,
    "visibility_timeout_s": 8,
}


@pytest.fixture(scope="session")
def fast_chat_model(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("fast-chat") / "model", smollm2_dir)


@contextmanager
def fast_stack(
    prefix: str,
    tmp: Path,
    s3_url: str,
    client: redis.Redis,
    model: Path,
    redis_url: str = REDIS_URL,
    shard_size: int = 8,
    **worker: object,
) -> Iterator[Stack]:
    """The API in a thread plus worker processes (started by the test) on the fast model."""
    settings = make_settings("s3", prefix, tmp, s3_url, shard_size=shard_size, redis_url=redis_url)
    worker_settings = {
        **FAST_WORKER,
        "beat_schedule_path": tmp / "beat-schedule",
        "worker_model": model,
        **worker,
    }
    with running_stack(settings, client, tmp, worker_settings) as stack:
        yield stack


@pytest.fixture
def stack_parts(
    session_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    redis_client: redis.Redis,
    fast_chat_model: Path,
) -> dict[str, Any]:
    """What ``fast_stack`` needs, with a fresh key prefix and directory for each test."""
    return {
        "prefix": f"{session_prefix}:{secrets.token_hex(3)}",
        "tmp": tmp_path_factory.mktemp("reliability"),
        "s3_url": s3_endpoint,
        "client": redis_client,
        "model": fast_chat_model,
    }


@pytest.fixture
def stack(stack_parts: dict[str, Any]) -> Iterator[Stack]:
    with fast_stack(**stack_parts) as live:
        yield live


def long_lines(prefix: str, count: int, max_tokens: int = 24) -> list[dict[str, Any]]:
    """Chat lines of a fixed generated length (``ignore_eos``)."""
    return [
        chat_line(f"{prefix}-{i}", f"Tell me about {i}.", max_tokens=max_tokens, ignore_eos=True)
        for i in range(count)
    ]


def submit(stack: Stack, lines: list[dict[str, Any]]) -> str:
    client = stack.client()
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (AOF on), to stop, restart or list whole."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
