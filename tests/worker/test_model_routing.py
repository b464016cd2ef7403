"""Two models in one deployment: two worker pools on one Redis, each batch on its own model.

The models are two tiny random-weight Llamas (different seeds, so different answers) with
SmolLM2's tokenizer and chat template. Each worker finds its served name from
``KVBATCH_MODELS`` (the entry whose directory it holds), one started as Celery's own
command line, one as ``kvbatch worker``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import LLM, SamplingParams
from infra.harness.batches import chat_line, create_chat_batch, result_lines, wait_batch
from infra.harness.stack import Stack
from infra.harness.tiny_models import build_tiny_chat_model
from infra.harness.workers import worker_stats
from jobs.connections import open_dispatcher
from tests.worker.conftest import StackOpener

pytestmark = pytest.mark.slow

MODEL_A, MODEL_B, GHOST = "tiny-a", "tiny-b", "tiny-ghost"  # nobody serves the ghost
PROMPTS = [f"Name a colour, number {i}." for i in range(6)]


@pytest.fixture(scope="module")
def model_dirs(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("routing-models")
    return {
        MODEL_A: build_tiny_chat_model(root / MODEL_A, smollm2_dir, seed=1),
        MODEL_B: build_tiny_chat_model(root / MODEL_B, smollm2_dir, seed=2),
    }


@pytest.fixture(scope="module")
def pools(model_dirs: dict[str, Path], stack_opener: StackOpener) -> Iterator[Stack]:
    """The API serving three model names, one worker for each of the first two."""
    models = {name: str(path) for name, path in model_dirs.items()}
    models[GHOST] = str(next(iter(model_dirs.values())).parent / "ghost")  # never served
    overrides: dict[str, object] = {"models": models, "shard_size": 2}
    with stack_opener("routing-stack", overrides) as live:
        live.start_worker(concurrency=2, wait=False, worker_model=model_dirs[MODEL_A])
        beat_b = live.tmp / "beat-schedule-b"  # each embedded beat keeps its own schedule file
        model_b = model_dirs[MODEL_B]
        live.start_worker(None, wait=False, worker_model=model_b, beat_schedule_path=beat_b)
        live.wait_ready()
        yield live


def lines_for(model: str, tag: str) -> list[dict[str, Any]]:
    return [
        chat_line(f"{tag}-{i}", p, model=model, temperature=0, max_tokens=6)
        for i, p in enumerate(PROMPTS)
    ]


def offline_answers(model_dir: Path) -> list[str]:
    llm = LLM(model=str(model_dir))
    outputs = llm.chat(
        [[{"role": "user", "content": p}] for p in PROMPTS],
        SamplingParams(temperature=0, max_tokens=6),
        use_tqdm=False,
    )
    return [o.outputs[0].text for o in outputs]


def test_models_list_counts_live_workers(pools: Stack) -> None:
    models = pools.client().models.list().data
    counts = {m.id: (m.model_extra or {}).get("workers") for m in models}
    assert counts == {MODEL_A: 1, MODEL_B: 1, GHOST: 0}
    ghost = pools.client().models.retrieve(GHOST)
    assert (ghost.model_extra or {}).get("workers") == 0


def test_each_batch_runs_only_on_its_models_worker(
    pools: Stack, model_dirs: dict[str, Path]
) -> None:
    client = pools.client()
    batch_ids = {
        MODEL_A: create_chat_batch(client, lines_for(MODEL_A, "a")),
        MODEL_B: create_chat_batch(client, lines_for(MODEL_B, "b")),
    }
    # A stray message for A's shard in B's queue: B forwards it rather than run it. Sent once
    # A's batch is past validation: until then its record names no model (intake sets it),
    # and a shard of a validating batch is skipped by whichever worker takes it.
    wait_batch(client, batch_ids[MODEL_A], {"in_progress", "finalizing", "completed"}, 60)
    settings = pools.settings
    stray = open_dispatcher(settings)
    try:
        queue_b = settings.model_router().queue_of(MODEL_B)
        stray.send_to(queue_b, batch_ids[MODEL_A], 0, priority=5)
    finally:
        stray.close()
    expected = {name: offline_answers(path) for name, path in model_dirs.items()}
    assert expected[MODEL_A] != expected[MODEL_B]  # a batch run by the wrong model shows
    for name, batch_id in batch_ids.items():
        batch = wait_batch(client, batch_id, {"completed", "failed"}, timeout_s=180)
        assert batch.status == "completed" and batch.errors is None, batch
        outputs, errors = result_lines(client, batch)
        assert errors == []
        bodies = [line["response"]["body"] for line in outputs]
        assert {body["model"] for body in bodies} == {name}
        answers = [body["choices"][0]["message"]["content"] for body in bodies]
        assert answers == expected[name], name
    # Each worker ran shards of one batch only: its own model's.
    worker_b = pools.workers[1]
    deadline = time.monotonic() + 60
    while "belongs to another model" not in worker_b.log_tail(100_000):
        assert time.monotonic() < deadline, worker_b.log_tail()
        time.sleep(0.2)
    stats = [
        worker_stats(pools.redis, pools.settings.redis.key_prefix, w.name) for w in pools.workers
    ]
    assert [s["num_batches_served"] for s in stats] == [1.0, 1.0]


def test_a_file_mixing_models_is_refused_with_its_line_numbers(pools: Stack) -> None:
    lines = lines_for(MODEL_A, "m")
    lines[2]["body"]["model"] = MODEL_B
    lines[4]["body"]["model"] = MODEL_B
    client = pools.client()
    batch = wait_batch(client, create_chat_batch(client, lines), {"failed"}, timeout_s=30)
    assert batch.errors is not None and batch.errors.data is not None
    issues = [(e.code, e.line, e.param) for e in batch.errors.data]
    assert issues == [("mismatched_model", 3, "body.model"), ("mismatched_model", 5, "body.model")]


def test_a_batch_for_an_unserved_model_waits_says_so_and_expires(pools: Stack) -> None:
    client = pools.client()
    batch_id = create_chat_batch(client, lines_for(GHOST, "g"))
    batch = wait_batch(client, batch_id, {"in_progress"}, timeout_s=30)
    assert batch.errors is not None and batch.errors.data is not None
    [note] = batch.errors.data
    assert (note.code, note.param, note.line) == ("model_not_served", "model", None)
    assert GHOST in (note.message or "")
    listed = {b.id: b for b in client.batches.list(limit=20)}
    assert listed[batch_id].errors == batch.errors
    time.sleep(2)  # it waits: no worker takes its shards
    assert client.batches.retrieve(batch_id).request_counts.completed == 0  # type: ignore[union-attr]
    # The API accepts windows of whole hours: move this batch's deadline to now instead.
    key = f"{pools.settings.redis.key_prefix}:batch:{batch_id}"
    pools.redis.hset(key, "expires_at", int(time.time()))
    expired = wait_batch(client, batch_id, {"expired"}, timeout_s=60)
    outputs, errors = result_lines(client, expired)
    assert outputs == [] and {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert len(errors) == len(PROMPTS)
