"""Fixtures for the jobs tests: a store and its shard ledger on the real Redis, under a key
prefix of their own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from jobs.state.shard_ledger import ShardLedger
from jobs.state.store import JobStore


@pytest.fixture
def store_client() -> Iterator[redis.Redis]:
    """The Redis client behind ``store`` and ``ledger``."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(store_client: redis.Redis) -> Iterator[JobStore]:
    """A :class:`JobStore` whose keys are deleted after the test."""
    prefix = f"kvbatch-test-jobs-{secrets.token_hex(4)}"
    yield JobStore(store_client, prefix)
    for key in store_client.scan_iter(match=f"{prefix}*"):
        store_client.delete(key)


@pytest.fixture
def ledger(store_client: redis.Redis, store: JobStore) -> ShardLedger:
    """The shard ledger over ``store``'s keys."""
    return ShardLedger(store_client, store)
