"""LoRA adapters through the real service: ``KVBATCH_LORA_ADAPTERS`` on one worker.

One tiny random-weight Llama (SmolLM2's tokenizer and chat template) with two seeded random
PEFT adapters (ranks 8 and 16, so answers change), and three adapters the worker cannot run:
one of rank 32 over its ``max_lora_rank`` of 16, one made for another base model (a tiny
Qwen3 of other shapes) and one with a corrupt safetensors file. Batches of the base model
and of each good adapter must equal the offline engine's greedy answers under that adapter;
a bad adapter's lines each become a 400 error line, and the worker keeps serving.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import LLM, SamplingParams
from infra.harness.batches import chat_line, create_chat_batch, result_lines, wait_batch
from infra.harness.stack import Stack
from infra.harness.tiny_models import build_tiny_chat_model, build_tiny_model
from jobs.state.worker_registry import WorkerRegistry
from tests.engine.lora_adapters import SPECS, build_random_adapter
from tests.worker.conftest import StackOpener
from worker.adapter_table import adapter_requests

pytestmark = pytest.mark.slow

BASE = "tiny-base"
GOOD = ("sql", "legal")  # ranks 8 and 16
BAD = {  # adapter -> what its error line says
    "wide": "max_lora_rank",
    "foreign": "another base model",
    "corrupt": "not a readable safetensors",
}
PROMPTS = [f"Name a colour, number {i}." for i in range(3)]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def deployment(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The base model's directory and every adapter's ``KVBATCH_LORA_ADAPTERS`` entry."""
    root = tmp_path_factory.mktemp("lora-service")
    base = build_tiny_chat_model(root / BASE, smollm2_dir, seed=3)
    sql = build_random_adapter(base, root / "sql", SPECS[0])
    legal = build_random_adapter(base, root / "legal", SPECS[1])
    wide = build_random_adapter(base, root / "wide", SPECS[2])
    other = build_tiny_model("qwen3", root / "qwen3")
    foreign = build_random_adapter(other, root / "foreign", SPECS[0])
    corrupt = root / "corrupt"
    shutil.copytree(sql, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00not safetensors")
    paths = {"sql": sql, "legal": legal, "wide": wide, "foreign": foreign, "corrupt": corrupt}
    # The short form, as an operator writes it: name=base_model:path.
    setting = ",".join(f"{name}={BASE}:{path}" for name, path in paths.items())
    return {"base": base, "adapters": setting}


@pytest.fixture(scope="module")
def live(deployment: dict[str, Any], stack_opener: StackOpener) -> Iterator[Stack]:
    overrides: dict[str, object] = {
        "models": {BASE: str(deployment["base"])},
        "lora_adapters": deployment["adapters"],
        "shard_size": 2,
    }
    with stack_opener("lora-stack", overrides) as stack:
        # LoRA is switched on by the adapters of its model; two slots, ranks up to 16.
        stack.start_worker(
            concurrency=2,
            worker_model=deployment["base"],
            engine_max_loras=2,
            engine_max_lora_rank=16,
        )
        yield stack


def lines_for(model: str) -> list[dict[str, Any]]:
    return [
        chat_line(f"{model}-{i}", p, model=model, temperature=0, max_tokens=MAX_TOKENS)
        for i, p in enumerate(PROMPTS)
    ]


def offline_answers(stack: Stack, base_dir: Path) -> dict[str, list[str]]:
    """Each good adapter's (and the base model's) offline greedy answers, with the same
    ``LoRARequest`` the worker builds from the settings."""
    requests = adapter_requests(stack.settings.serving.lora_adapters, BASE)
    llm = LLM(model=str(base_dir), enable_lora=True, max_loras=2, max_lora_rank=16)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    answers: dict[str, list[str]] = {}
    for name, lora in [(BASE, None), *((n, requests[n]) for n in GOOD)]:
        outputs = llm.chat(chats, params, use_tqdm=False, lora_request=lora)
        answers[name] = [o.outputs[0].text for o in outputs]
    return answers


def test_adapter_batches_match_offline_greedy_and_name_the_adapter(
    live: Stack, deployment: dict[str, Any]
) -> None:
    client = live.client()
    listed = {m.id: (m.model_extra or {}).get("parent") for m in client.models.list().data}
    assert listed == {BASE: None, **{name: BASE for name in [*GOOD, *BAD]}}
    [worker] = WorkerRegistry(live.redis, live.settings.redis.key_prefix).live()
    assert (worker.model, worker.adapters) == (BASE, sorted([*GOOD, *BAD]))
    batch_ids = {name: create_chat_batch(client, lines_for(name)) for name in (BASE, *GOOD)}
    expected = offline_answers(live, deployment["base"])
    assert len({tuple(answers) for answers in expected.values()}) == 3  # adapters change them
    for name, batch_id in batch_ids.items():
        batch = wait_batch(client, batch_id, {"completed", "failed"}, timeout_s=180)
        assert batch.status == "completed" and batch.errors is None, batch
        outputs, errors = result_lines(client, batch)
        assert errors == []
        bodies = [
            line["response"]["body"] for line in sorted(outputs, key=lambda x: x["custom_id"])
        ]
        assert {body["model"] for body in bodies} == {name}
        answers = [body["choices"][0]["message"]["content"] for body in bodies]
        assert answers == expected[name], name


def test_bad_adapters_answer_each_line_with_an_error(live: Stack) -> None:
    client = live.client()
    batch_ids = {name: create_chat_batch(client, lines_for(name)[:2]) for name in BAD}
    for name, batch_id in batch_ids.items():
        batch = wait_batch(client, batch_id, {"completed", "failed"}, timeout_s=120)
        assert batch.status == "completed", batch
        outputs, errors = result_lines(client, batch)
        assert outputs == [] and len(errors) == 2, name
        for line in errors:
            response = line["response"]
            assert response["status_code"] == 400
            message = response["body"]["error"]["message"]
            assert f"LoRA adapter {name!r}" in message and BAD[name] in message, message
    # The worker found them out while loading, and lived through their lines: a good
    # adapter's batch still runs.
    log = live.workers[0].log_tail(100_000)
    for name in BAD:
        assert f"LoRA adapter {name!r} cannot run on this model" in log, log

    after = wait_batch(client, create_chat_batch(client, lines_for("sql")[:1]), {"completed"})
    assert after.request_counts is not None and after.request_counts.completed == 1


def test_an_unknown_adapter_is_refused_at_validation(live: Stack) -> None:
    client = live.client()
    batch = wait_batch(client, create_chat_batch(client, lines_for("no-such")), {"failed"}, 30)
    assert batch.errors is not None and batch.errors.data is not None
    assert {(e.code, e.param) for e in batch.errors.data} == {("model_not_found", "body.model")}
