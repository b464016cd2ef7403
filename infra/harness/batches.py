"""Building batch input files and following batches through the official ``openai`` client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from openai import OpenAI
from openai.types import Batch

from infra.harness.service import MODEL


def batch_line(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    """One input line for ``url``; the body names the test model unless ``body`` does."""
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": MODEL, **body}}


def chat_line(custom_id: str, content: str = "Say hi.", **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return batch_line(
        custom_id, "/v1/chat/completions", **{"messages": messages, "max_tokens": 8, **body}
    )


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def create_chat_batch(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    """Upload ``lines`` and create a 24 h chat-completions batch of them; its id."""
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def wait_settled(client: OpenAI, batch_id: str, timeout_s: float = 20.0) -> Batch:
    """Poll until intake has moved the batch out of ``validating``."""
    return _wait(client, batch_id, lambda status: status != "validating", timeout_s, 0.05)


def wait_batch(client: OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 240) -> Batch:
    """Poll until the batch reaches one of ``statuses``."""
    return _wait(client, batch_id, statuses.__contains__, timeout_s, 0.2)


def _wait(
    client: OpenAI, batch_id: str, done: Callable[[str], bool], timeout_s: float, poll_s: float
) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch.status):
            return batch
        assert time.monotonic() < deadline, f"{batch_id} stuck in {batch.status}: {batch}"
        time.sleep(poll_s)


def result_lines(client: OpenAI, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The output and error files' lines (empty when the batch has no such file)."""

    def read(file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        text = client.files.content(file_id).read().decode()
        return [json.loads(line) for line in text.splitlines() if line]

    return read(batch.output_file_id), read(batch.error_file_id)
