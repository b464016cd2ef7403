"""The whole service with the official SDK: uvicorn API, moto S3, Redis, a worker process."""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine import LLM, SamplingParams
from infra.harness.batches import chat_line, jsonl, result_lines, wait_batch
from infra.harness.service import SMOLLM2
from infra.harness.workers import worker_stats
from tests.worker.conftest import Stack
from tests.worker.service import assert_each_once

pytestmark = pytest.mark.slow


def submit(stack: Stack, lines: list[dict[str, Any]], **metadata: str) -> str:
    client = stack.client()
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or None,
    )
    return batch.id


def wait_progress(stack: Stack, batch_id: str, completed: int, timeout_s: float = 120) -> None:
    client = stack.client()
    deadline = time.monotonic() + timeout_s
    while client.batches.retrieve(batch_id).request_counts.completed < completed:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.1)


def test_chat_batch_matches_offline_engine(stack: Stack) -> None:
    prompts = [f"Give me one word about the number {i}." for i in range(100)]
    lines = [chat_line(f"req-{i}", p, temperature=0, max_tokens=4) for i, p in enumerate(prompts)]
    batch_id = submit(stack, lines)

    llm = LLM(model=str(SMOLLM2))
    offline = llm.chat(
        [[{"role": "user", "content": p}] for p in prompts],
        SamplingParams(temperature=0, max_tokens=4),
        use_tqdm=False,
    )
    client = stack.client()
    batch = wait_batch(client, batch_id, {"completed", "failed"})
    assert batch.status == "completed", batch
    outputs, errors = result_lines(client, batch)
    assert errors == [] and batch.error_file_id is None
    assert [line["custom_id"] for line in outputs] == [f"req-{i}" for i in range(100)]
    for line, expected in zip(outputs, offline, strict=True):
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == expected.outputs[0].text
        assert body["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)
        assert body["usage"]["completion_tokens"] == len(expected.outputs[0].token_ids)
    counts, usage = batch.request_counts, batch.usage
    assert counts is not None and usage is not None
    assert (counts.total, counts.completed, counts.failed) == (100, 100, 0)
    assert usage.output_tokens == sum(len(o.outputs[0].token_ids) for o in offline)
    assert usage.input_tokens == sum(len(o.prompt_token_ids) for o in offline)


def test_four_batches_share_engine_steps(stack: Stack) -> None:
    before = worker_stats(stack.redis, stack.settings.redis.key_prefix, stack.workers[0].name)
    batch_ids = [
        submit(
            stack,
            [
                chat_line(
                    f"b{b}-{i}",
                    f"Tell me about {b} and {i}.",
                    max_tokens=12,
                    temperature=0,
                    ignore_eos=True,
                )
                for i in range(6)
            ],
        )
        for b in range(4)
    ]
    client = stack.client()
    for batch_id in batch_ids:
        batch = wait_batch(client, batch_id, {"completed", "failed"})
        assert batch.status == "completed"
        outputs, errors = result_lines(client, batch)
        assert len(outputs) == 6 and not errors
    time.sleep(1)  # one more stats publication
    after = worker_stats(stack.redis, stack.settings.redis.key_prefix, stack.workers[0].name)
    assert after["num_multi_batch_steps"] > before.get("num_multi_batch_steps", 0)
    assert after["max_batches_in_step"] >= 2
    assert after["num_batches_served"] - before.get("num_batches_served", 0) >= 4


def staggered(prefix: str, count: int) -> list[dict[str, Any]]:
    """Lines that finish one after another: line i generates 2 + 6 i tokens."""
    return [
        chat_line(
            f"{prefix}-{i}",
            f"Write a story number {i}.",
            max_tokens=2 + 6 * i,
            temperature=0,
            ignore_eos=True,
        )
        for i in range(count)
    ]


def test_cancel_mid_run_keeps_finished_results(stack: Stack) -> None:
    lines = staggered("c", 16)
    batch_id = submit(stack, lines)
    wait_progress(stack, batch_id, completed=2)
    client = stack.client()
    assert client.batches.cancel(batch_id).status in ("cancelling", "cancelled")
    batch = wait_batch(client, batch_id, {"cancelled"}, timeout_s=30)
    outputs, errors = result_lines(client, batch)
    assert_each_once([line["custom_id"] for line in lines], outputs, errors)
    assert outputs and errors
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors)
    counts = batch.request_counts
    assert counts is not None
    assert (counts.completed, counts.failed) == (len(outputs), len(errors))
    assert counts.completed + counts.failed == counts.total == 16
    assert batch.cancelled_at is not None and batch.cancelling_at is not None


def test_expiry_ends_a_running_batch(stack: Stack) -> None:
    lines = staggered("e", 16)
    batch_id = submit(stack, lines)
    wait_progress(stack, batch_id, completed=2)
    # The API accepts windows of whole hours: move this batch's deadline to now instead.
    stack.redis.hset(
        f"{stack.settings.redis.key_prefix}:batch:{batch_id}", "expires_at", int(time.time())
    )
    client = stack.client()
    batch = wait_batch(client, batch_id, {"expired"}, timeout_s=30)
    outputs, errors = result_lines(client, batch)
    assert_each_once([line["custom_id"] for line in lines], outputs, errors)
    assert outputs and {e["error"]["code"] for e in errors} == {"batch_expired"}
    counts = batch.request_counts
    assert counts is not None
    assert (counts.completed, counts.failed, counts.total) == (len(outputs), len(errors), 16)
    assert batch.expired_at is not None
