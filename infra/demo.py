"""The main job (``kvbatch demo``), start to finish, through the official ``openai`` SDK.

Start the local stack, upload the sample chat batch, create a batch, follow it with a
progress bar, print the answers, and stop everything the demo started. The demo's Redis
keys, broker keys and queue carry a prefix of their own (deleted at the end), so it never
meets another stack's workers on a shared Redis.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import redis
from openai import OpenAI, OpenAIError
from openai.types import Batch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.sample_batch import chat_batch_lines, read_prompts, to_jsonl
from infra.stack import LocalStack, pick_ports
from infra.stack_config import StackConfig
from infra.up_command import startup_errors, stop_on_signals

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})


def run_demo(
    prompts_file: Path,
    limit: int | None,
    max_tokens: int,
    timeout_s: float,
    config: StackConfig,
) -> int:
    """Run the sample batch through a freshly started stack; 0 when every prompt is answered."""
    console = Console()
    prompts = read_prompts(prompts_file)[:limit]
    if not prompts:
        console.print(f"[red]kvbatch demo: no prompts in {prompts_file}")
        return 2
    prefix = f"kvbatch-demo-{secrets.token_hex(4)}"
    config.flower_port = None
    config.env.update(
        {
            "KVBATCH_KEY_PREFIX": prefix,
            "KVBATCH_BROKER_KEY_PREFIX": f"{prefix}:broker:",
            "KVBATCH_SHARD_QUEUE": f"{prefix}.shards",
        }
    )
    stack = LocalStack(pick_ports(config), Console(stderr=True))
    errors: tuple[type[Exception], ...] = (*startup_errors(), OpenAIError)
    with stop_on_signals():
        try:
            stack.start()
            return _run_batch(stack, prompts, max_tokens, timeout_s, console)
        except errors as exc:
            console.print(f"[red]kvbatch demo: {exc}")
            return 1
        finally:
            stack.stop_services()
            _delete_keys(stack.settings.redis.redis_url, prefix)
            stack.stop()


def _run_batch(
    stack: LocalStack, prompts: list[str], max_tokens: int, timeout_s: float, console: Console
) -> int:
    client = OpenAI(base_url=f"{stack.api_url}/v1", api_key=stack.api_key, max_retries=2)
    model = next(iter(stack.settings.serving.models))
    upload = client.files.create(
        file=("chat_batch.jsonl", to_jsonl(chat_batch_lines(prompts, model, max_tokens))),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    console.print(f"uploaded {upload.id} ({len(prompts)} requests), created batch {batch.id}")
    batch = _follow(client, batch, timeout_s, console)
    if batch.status != "completed" or not batch.output_file_id:
        console.print(f"[red]batch {batch.id} ended {batch.status}: {batch.errors}")
        return 1
    answers = _answers(client.files.content(batch.output_file_id).text)
    table = Table("prompt", "answer", show_lines=True)
    for index, prompt in enumerate(prompts):
        table.add_row(prompt, answers.get(f"prompt-{index}", "[red](no answer)"))
    console.print(table)
    counts = batch.request_counts
    failed = counts.failed if counts else len(prompts)
    console.print(f"{len(answers)} answered, {failed} failed")
    return 0 if len(answers) == len(prompts) and failed == 0 else 1


def _follow(client: OpenAI, batch: Batch, timeout_s: float, console: Console) -> Batch:
    """Poll the batch with a progress bar until it ends; cancel it on timeout."""
    deadline = time.monotonic() + timeout_s
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(batch.status, total=None)
        while batch.status not in TERMINAL_STATUSES:
            if time.monotonic() > deadline:
                console.print(f"[red]timed out after {timeout_s:.0f}s; cancelling {batch.id}")
                return client.batches.cancel(batch.id)
            time.sleep(1.0)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            if counts is not None and counts.total:
                done = counts.completed + counts.failed
                progress.update(task, description=batch.status, total=counts.total, completed=done)
            else:
                progress.update(task, description=batch.status)
    return batch


def _answers(output_jsonl: str) -> dict[str, str]:
    """custom_id → the first choice's message content, for each successful result line."""
    answers: dict[str, str] = {}
    for line in filter(None, output_jsonl.splitlines()):
        record = json.loads(line)
        response = record.get("response") or {}
        if response.get("status_code") == 200:
            choice = response["body"]["choices"][0]
            answers[record["custom_id"]] = choice["message"]["content"].strip()
    return answers


def _delete_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()
