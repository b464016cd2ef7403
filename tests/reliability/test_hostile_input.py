"""A corpus of hostile input files through the live stack: each is refused with a clear 4xx,
fails validation with line numbers (file-level problems), or runs with its bad lines answered
by 400 lines in the error file (body-level problems, as OpenAI does); never a 5xx, never a
dead worker.

tests/api/test_bad_input.py covers the field-by-field table; this adds the byte-level and
size-level hostility (BOM, CRLF, truncation, 17 MB lines, deep nesting, giant numbers,
prompts longer than the model's context) with a worker behind the API.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from infra.harness.batches import chat_line, result_lines, wait_batch, wait_settled
from infra.harness.workers import WorkerProcess
from tests.reliability.conftest import fast_stack, submit
from tests.worker.conftest import Stack
from tests.worker.service import assert_each_once

pytestmark = pytest.mark.slow

GOOD = json.dumps(chat_line("good", max_tokens=2)).encode()


def nested(depth: int) -> bytes:
    content = "[" * depth + "]" * depth
    return GOOD.replace(b'"Say hi."', content.encode())


def body(**changes: Any) -> bytes:
    line = chat_line("b", max_tokens=2)
    line["body"].update(changes)
    return json.dumps(line).encode()


# (name, file bytes, the batch's status once validated, first error code)
CORPUS: list[tuple[str, bytes, str, str | None]] = [
    ("empty file", b"", "failed", "empty_file"),
    ("truncated last line", GOOD + b"\n" + GOOD[: len(GOOD) // 2], "failed", "invalid_json_line"),
    (
        "invalid utf-8",
        GOOD + b"\n" + GOOD.replace(b"Say", b"S\xc3\x28y"),
        "failed",
        "invalid_encoding",
    ),
    ("utf-8 BOM", b"\xef\xbb\xbf" + GOOD + b"\n", "failed", "invalid_json_line"),
    (
        "CRLF line ends",
        GOOD + b"\r\n" + GOOD.replace(b"good", b"g2") + b"\r\n",
        "in_progress",
        None,
    ),
    ("NUL bytes", GOOD + b"\n\x00\x00\x00\n", "failed", "invalid_json_line"),
    (
        "17 MB line",
        GOOD + b"\n" + b'{"custom_id": "' + b"x" * 17_000_000 + b'"}\n',
        "failed",
        "line_too_long",
    ),
    # A body the endpoint would refuse is that line's 400; the batch runs ("in_progress"),
    # even one nested deeper than json.loads goes.
    ("deep nesting", nested(100_000), "in_progress", None),
    ("moderate nesting", nested(500), "in_progress", None),
    ("wrong types", body(max_tokens="many", temperature=[1]), "in_progress", None),
    ("messages not a list", body(messages={"role": "user"}), "in_progress", None),
    ("huge n", body(n=10**12), "in_progress", None),
    ("huge max_tokens", body(max_tokens=10**15), "in_progress", None),
    ("negative max_tokens", body(max_tokens=-1), "in_progress", None),
    ("float overflow", body(temperature=1e400), "in_progress", None),
    ("huge integer literal", body(seed=10**400), "in_progress", None),
]


@pytest.fixture(scope="module")
def corpus_stack(
    session_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    redis_client: redis.Redis,
    fast_chat_model: Any,
) -> Iterator[tuple[Stack, WorkerProcess]]:
    tmp = tmp_path_factory.mktemp("hostile")
    prefix = f"{session_prefix}:{secrets.token_hex(3)}"
    with fast_stack(prefix, tmp, s3_endpoint, redis_client, fast_chat_model) as stack:
        yield stack, stack.start_worker(concurrency=2)


@pytest.fixture
def stack(corpus_stack: tuple[Stack, WorkerProcess]) -> Iterator[Stack]:
    """The corpus stack for one test; its worker must outlive whatever the test sent."""
    stack, worker = corpus_stack
    yield stack
    assert worker.process.poll() is None, worker.log_tail()


def upload(stack: Stack, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{stack.server.url}/v1/files",
        headers={"Authorization": "Bearer key-alpha"},
        files={"file": ("in.jsonl", content)},
        data={"purpose": "batch"},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("content", "status", "code"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_hostile_file(stack: Stack, content: bytes, status: str, code: str | None) -> None:
    uploaded = upload(stack, content)
    assert uploaded.status_code == 200, uploaded.text
    client = stack.client()
    batch = client.batches.create(
        input_file_id=uploaded.json()["id"],
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    settled = wait_settled(client, batch.id)
    # An accepted one-shard batch may already be finishing when the first poll sees it.
    accepted = {"in_progress", "finalizing", "completed"}
    assert settled.status in (accepted if status == "in_progress" else {status}), settled
    if code is not None:
        assert settled.errors is not None and settled.errors.data
        assert settled.errors.data[0].code == code, settled.errors
    else:
        done = wait_batch(client, batch.id, {"completed"}, timeout_s=60)
        counts = done.request_counts
        assert counts is not None and counts.completed + counts.failed == counts.total
        outputs, errors = result_lines(client, done)
        assert len(outputs) == counts.completed and len(errors) == counts.failed
        for error in errors:  # each bad body answered as the endpoint would: a 400
            assert error["response"]["status_code"] == 400, error
            assert error["response"]["body"]["error"]["param"], error


def test_prompts_over_the_context_go_to_the_error_file(stack: Stack) -> None:
    long_prompt = "lorem ipsum dolor " * 1500  # well over the model's 2048 positions
    lines = [
        chat_line("ok-0", "Short.", max_tokens=2),
        chat_line("long", long_prompt, max_tokens=2),
        chat_line("ok-1", "Short too.", max_tokens=2),
        chat_line("fills", "Short.", max_tokens=4000),
    ]
    client = stack.client()
    batch = wait_batch(client, submit(stack, lines), {"completed", "failed"}, timeout_s=60)
    assert batch.status == "completed", batch
    outputs, errors = result_lines(client, batch)
    assert_each_once([line["custom_id"] for line in lines], outputs, errors)
    refused = {e["custom_id"]: e for e in errors}
    assert {"long", "fills"} <= set(refused)
    for error in refused.values():
        assert error["response"]["status_code"] == 400, error
        assert error["response"]["body"]["error"]["code"], error


def test_bad_parameter_lines_are_400_lines_and_every_other_line_runs(stack: Stack) -> None:
    """As the OpenAI Batch API does: 50 lines, 5 with bad parameters, 45 answers, 5 errors."""
    bad: dict[int, tuple[str, dict[str, Any]]] = {
        7: ("temperature", {"temperature": 5}),
        13: ("foo", {"foo": "bar"}),
        21: ("stream", {"stream": True}),
        34: ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
        48: ("n", {"n": 10**6}),
    }
    lines = []
    for i in range(50):
        # Harmless fields that generated bodies carry ride along on the good lines.
        extra = bad[i][1] if i in bad else {"stream": False, "store": False, "service_tier": "auto"}
        lines.append(chat_line(f"r-{i}", f"Count to {i}.", max_tokens=2, **extra))
    client = stack.client()
    batch = wait_batch(client, submit(stack, lines), {"completed", "failed"}, timeout_s=120)
    assert batch.status == "completed", batch
    counts = batch.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (50, 45, 5)
    outputs, errors = result_lines(client, batch)
    assert_each_once([line["custom_id"] for line in lines], outputs, errors)
    assert len(outputs) == 45 and all(o["response"]["status_code"] == 200 for o in outputs)
    by_id = {e["custom_id"]: e for e in errors}
    assert set(by_id) == {f"r-{i}" for i in bad}
    for i, (param, _) in bad.items():
        line = by_id[f"r-{i}"]
        assert line["error"] is None and line["response"]["status_code"] == 400, line
        error = line["response"]["body"]["error"]
        assert error["param"] == param and error["code"] and error["message"], error
        assert error["type"] == "invalid_request_error"
    assert "tool calling is not supported" in by_id["r-34"]["response"]["body"]["error"]["message"]
