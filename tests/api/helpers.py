"""Building batch input lines and waiting on batches, shared by the API tests."""

from __future__ import annotations

import json
import time
from typing import Any

from openai import OpenAI
from openai.types import Batch

from tests.api.conftest import MODEL


def chat_line(custom_id: str, content: str = "Say hi.", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 8,
            **body,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def wait_settled(client: OpenAI, batch_id: str, timeout_s: float = 20.0) -> Batch:
    """Poll until intake has moved the batch out of ``validating``."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status != "validating":
            return batch
        assert time.monotonic() < deadline, f"{batch_id} still validating"
        time.sleep(0.05)
