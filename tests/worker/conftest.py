"""Fixtures for the worker tests: a live stack per module (API, moto S3, Redis, worker)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import redis

from infra.harness.stack import Stack, open_stack
from tests.api import conftest as api_fixtures

# The API tests' session fixtures: one Redis client, key prefix and S3 server per session.
redis_client = api_fixtures.redis_client
session_prefix = api_fixtures.session_prefix
s3_endpoint = api_fixtures.s3_endpoint


StackOpener = Callable[..., AbstractContextManager[Stack]]


@pytest.fixture(scope="module")
def stack_opener(
    session_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    redis_client: redis.Redis,
) -> StackOpener:
    """Opens a stack of a test's own (the API, S3 and Redis; no worker yet) under a fresh
    key prefix and folder: ``opener(name, settings_overrides, **worker_settings)``."""

    def opener(
        name: str, settings_overrides: dict[str, object] | None = None, **worker: object
    ) -> AbstractContextManager[Stack]:
        tmp = tmp_path_factory.mktemp(name)
        prefix = f"{session_prefix}:{secrets.token_hex(2)}"
        return open_stack(prefix, tmp, s3_endpoint, redis_client, settings_overrides, **worker)

    return opener


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    smollm2_dir: Path,  # the worker loads it: fetched first when this module runs alone
    stack_opener: StackOpener,
) -> Iterator[Stack]:
    """The API, S3 and one worker process, for a whole test module.

    A module's ``STACK_SETTINGS`` (a dict, optional) overrides the service settings.
    """
    overrides = getattr(request.module, "STACK_SETTINGS", None)
    with stack_opener("worker-stack", overrides) as live:
        live.start_worker()
        yield live
