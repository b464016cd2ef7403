"""Fixtures for the worker tests: a live stack per module (API, moto S3, Redis, worker)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from infra.harness.stack import Stack, open_stack
from tests.api import conftest as api_fixtures

# The API tests' session fixtures: one Redis client, key prefix and S3 server per session.
redis_client = api_fixtures.redis_client
session_prefix = api_fixtures.session_prefix
s3_endpoint = api_fixtures.s3_endpoint


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    smollm2_dir: Path,  # the worker loads it: fetched first when this module runs alone
    session_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    redis_client: redis.Redis,
) -> Iterator[Stack]:
    """The API, S3 and one worker process, for a whole test module.

    A module's ``STACK_SETTINGS`` (a dict, optional) overrides the service settings.
    """
    tmp = tmp_path_factory.mktemp("worker-stack")
    prefix = f"{session_prefix}:{secrets.token_hex(2)}"
    overrides = getattr(request.module, "STACK_SETTINGS", None)
    with open_stack(prefix, tmp, s3_endpoint, redis_client, settings_overrides=overrides) as live:
        live.start_worker()
        yield live
