"""The sample batch: ``samples/chat_prompts.txt`` as Batch API chat-completion lines.

``samples/chat_batch.jsonl`` is this module's output for the default model; regenerate it
with ``python -m infra.sample_batch`` after editing the prompts (a test checks they agree).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
PROMPTS_FILE = SAMPLES_DIR / "chat_prompts.txt"
BATCH_FILE = SAMPLES_DIR / "chat_batch.jsonl"
SAMPLE_MODEL = "smollm2-135m-instruct"


def read_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    """One prompt per non-blank line."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def chat_batch_lines(
    prompts: list[str], model: str = SAMPLE_MODEL, max_tokens: int = 64
) -> list[dict[str, Any]]:
    """One ``/v1/chat/completions`` request per prompt, ``custom_id`` = ``prompt-<index>``."""
    return [
        {
            "custom_id": f"prompt-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for index, prompt in enumerate(prompts)
    ]


def to_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


if __name__ == "__main__":
    BATCH_FILE.write_bytes(to_jsonl(chat_batch_lines(read_prompts())))
