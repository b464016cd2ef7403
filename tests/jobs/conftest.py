"""Fixtures for the jobs tests: a store on the real Redis under a key prefix of its own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from jobs.state.store import JobStore


@pytest.fixture
def store() -> Iterator[JobStore]:
    """A :class:`JobStore` whose keys are deleted after the test."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    prefix = f"kvbatch-test-jobs-{secrets.token_hex(4)}"
    yield JobStore(client, prefix)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()
