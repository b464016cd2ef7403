"""A worker killed with SIGKILL mid-batch: its shards come back, nothing is lost or doubled."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from infra.harness.batches import chat_line, jsonl, result_lines, wait_batch
from infra.harness.workers import worker_stats
from tests.worker.conftest import Stack, StackOpener
from tests.worker.service import assert_each_once

pytestmark = pytest.mark.slow


@pytest.fixture
def short_timeout_stack(stack_opener: StackOpener) -> Iterator[Stack]:
    with stack_opener("redelivery", visibility_timeout_s=8) as stack:
        yield stack


def test_sigkill_mid_batch_then_new_worker_completes(short_timeout_stack: Stack) -> None:
    stack = short_timeout_stack
    first = stack.start_worker(concurrency=2)
    lines = [
        chat_line(f"k-{i}", f"Write about {i}.", max_tokens=12, temperature=0, ignore_eos=True)
        for i in range(40)
    ]
    client = stack.client()
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch_id = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    # Kill while the first shards' requests are inside the engine, before any finished.
    deadline = time.monotonic() + 120
    while (
        worker_stats(stack.redis, stack.settings.redis.key_prefix, first.name).get(
            "num_submitted", 0
        )
        < 1
    ):
        assert time.monotonic() < deadline, first.log_tail()
        time.sleep(0.05)
    first.kill()
    at_kill = client.batches.retrieve(batch_id).request_counts
    assert at_kill is not None and at_kill.completed < 40, "killed mid-batch"

    stack.start_worker(concurrency=2)
    batch = wait_batch(client, batch_id, {"completed", "failed"}, timeout_s=240)
    assert batch.status == "completed", batch
    outputs, errors = result_lines(client, batch)
    assert_each_once([line["custom_id"] for line in lines], outputs, errors)
    assert not errors
    counts = batch.request_counts
    assert counts is not None and (counts.completed, counts.failed) == (40, 0)
