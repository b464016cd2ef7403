"""Redis Sentinel: the master dies mid-batch, a replica is promoted, the batch completes.

The state store and the broker both use the ``sentinel://`` URL (jobs/settings_sections.py).
Replication is asynchronous, so the master's last writes before it died may be missing on
the promoted replica: a queue push (the watchdog sends the shard again), a shard's counts
(final counts come from the assembled files), a done mark (the shard runs again).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from infra.harness.sentinel import SentinelGroup
from jobs.connections import redis_client
from tests.reliability.conftest import fast_stack, long_lines, submit
from tests.reliability.test_worker_faults import assert_complete, wait_submitted
from tests.worker.conftest import Stack

pytestmark = pytest.mark.slow


def test_master_killed_mid_batch_the_replica_takes_over_and_the_batch_completes(
    stack_parts: dict[str, Any], tmp_path: Path
) -> None:
    group = SentinelGroup(tmp_path / "sentinel")
    group.start()
    client = redis_client(group.url, SentinelGroup.MASTER, decode_responses=True)
    try:
        parts = {**stack_parts, "client": client, "redis_url": group.url}
        with fast_stack(**parts) as stack:
            lines = long_lines("f", 48)
            batch_id = submit(stack, lines)
            worker = stack.start_worker(concurrency=2)
            wait_submitted(stack, worker)
            group.master.stop(signal.SIGKILL)
            deadline = time.monotonic() + 60
            while group.master_port() != group.replica.port:
                assert time.monotonic() < deadline, "no failover"
                time.sleep(0.2)
            wait_api_follows(stack, batch_id)
            assert_complete(stack, batch_id, [line["custom_id"] for line in lines])
            assert worker.process.poll() is None, "the worker followed the new master"
    finally:
        client.close()
        group.stop()


def wait_api_follows(stack: Stack, batch_id: str) -> None:
    """Until the API answers again: its own sentinel client may find no master for a moment
    after this test's client saw the promotion, and answers 503 ("retry shortly") meanwhile,
    as a client should expect during a failover."""
    deadline = time.monotonic() + 30
    while True:
        try:
            stack.client().batches.retrieve(batch_id)
            return
        except openai.InternalServerError as err:
            assert err.status_code == 503 and time.monotonic() < deadline, err
            time.sleep(0.5)
