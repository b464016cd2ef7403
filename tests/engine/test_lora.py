"""Multi-LoRA: one batch of base-model and adapter requests, each answer token-identical to
transformers + peft greedy for its own adapter; the prefix cache kept apart per adapter;
bad adapters refused with a clear error, the engine still serving afterwards."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

import kernels
from engine import LLM, InvalidRequestError, LoRAAdapterError, LoRARequest, SamplingParams
from engine.tokenizer import Tokenizer
from infra.harness.redis_server import free_port
from infra.harness.workloads import CORPUS
from tests.engine.lora_adapters import SPECS, build_random_adapter, peft_greedy
from tests.engine.prompts import random_token_prompts, text_token_prompts

NUM_PROMPTS = 8
MAX_PROMPT_LEN = 60
MAX_TOKENS = 8
# SmolLM2 (30 layers, 49k vocabulary) costs far more per prompt on the CI's two cores: one
# prompt for the base model and for each adapter.
NUM_PROMPTS_LARGE = 4
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dirs: dict[str, Path], smollm2_dir: Path) -> dict[str, Path]:
    return {"smollm2": smollm2_dir, **tiny_model_dirs}


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lora_adapters")


@cache
def adapters_for(model_dir: Path, root: Path) -> list[LoRARequest]:
    """The three seeded adapters of ``SPECS`` for one base model, as engine requests."""
    loras = []
    for i, spec in enumerate(SPECS, start=1):
        out = build_random_adapter(model_dir, root / f"{model_dir.name}-r{spec.rank}", spec)
        loras.append(LoRARequest(f"r{spec.rank}", i, str(out)))
    return loras


@cache
def mixed_case(
    model_dir: Path, root: Path
) -> tuple[list[list[int]], list[LoRARequest | None], list[list[int]], list[list[int]]]:
    """(prompts, each prompt's adapter or None, peft greedy answers, base answers): prompt
    ``i`` runs under adapter ``i % 4`` (0: the base model), so adapters interleave."""
    if (model_dir / "tokenizer.json").exists():
        ids = Tokenizer.from_pretrained(str(model_dir)).encode(CORPUS, add_special_tokens=False)
        prompts = text_token_prompts(ids, NUM_PROMPTS_LARGE, MAX_PROMPT_LEN)
    else:
        prompts = random_token_prompts(NUM_PROMPTS, MAX_PROMPT_LEN, 512)
    loras: list[LoRARequest | None] = [None, *adapters_for(model_dir, root)]
    per_prompt = [loras[i % len(loras)] for i in range(len(prompts))]
    base = peft_greedy(model_dir, None, prompts, MAX_TOKENS)
    expected = list(base)
    for lora in loras[1:]:
        assert lora is not None
        mine = [i for i, r in enumerate(per_prompt) if r is lora]
        answers = peft_greedy(model_dir, Path(lora.path), [prompts[i] for i in mine], MAX_TOKENS)
        for i, answer in zip(mine, answers, strict=True):
            expected[i] = answer
    return prompts, per_prompt, expected, base


def run_mixed(
    model_dir: Path, root: Path, subset: slice = slice(None), **engine_args: object
) -> LLM:
    """Run ``subset`` of the mixed case in one batch and check every answer."""
    all_prompts, all_loras, all_expected, all_base = mixed_case(model_dir, root)
    prompts, loras = all_prompts[subset], all_loras[subset]
    expected, base = all_expected[subset], all_base[subset]
    llm = LLM(str(model_dir), enable_lora=True, max_lora_rank=32, **engine_args)  # type: ignore[arg-type]
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=loras)
    got = [o.outputs[0].token_ids for o in outputs]
    for i, (answer, want) in enumerate(zip(got, expected, strict=True)):
        name = loras[i].name if loras[i] is not None else "base"  # type: ignore[union-attr]
        assert answer == want, f"prompt {i} under {name}: engine {answer} != peft {want}"
    for lora in {r for r in loras if r is not None}:
        mine = [i for i, r in enumerate(loras) if r is lora]
        assert any(expected[i] != base[i] for i in mine), f"{lora.name} changed no answer"
    return llm


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "qwen2", "qwen3", "smollm2"])
def test_mixed_adapters_match_peft(
    model: str, model_dirs: dict[str, Path], adapter_root: Path
) -> None:
    """All three adapters and the base model in one batch, a slot for each adapter."""
    run_mixed(model_dirs[model], adapter_root, max_loras=3, block_size=16)


@pytest.mark.slow
def test_adapters_wait_for_slots(model_dirs: dict[str, Path], adapter_root: Path) -> None:
    """One slot for three adapters, prefills in chunks: requests wait for the slot, idle
    adapters are evicted and loaded again, and every answer still matches."""
    llm = run_mixed(
        model_dirs["llama"], adapter_root, max_loras=1, block_size=16, max_num_batched_tokens=32
    )
    slots = llm.engine.scheduler.lora_slots
    assert slots is not None and slots.num_evictions >= 2 and sum(slots.users) == 0


@pytest.mark.slow
def test_mixed_adapters_with_triton_kernels(
    model_dirs: dict[str, Path], adapter_root: Path
) -> None:
    """The batch with every Triton kernel (the LoRA shrink and expand among them),
    interpreted on the CPU, where each kernel program runs in Python: tiny Llama, the first
    four prompts (the base model and each adapter once, 1 to 60 tokens), two slots."""
    previous = kernels.get_backend()
    kernels.set_backend("triton")
    try:
        run_mixed(model_dirs["llama"], adapter_root, slice(0, 4), max_loras=2, block_size=16)
    finally:
        kernels.set_backend(previous)


def test_prefix_cache_is_per_adapter(model_dirs: dict[str, Path], adapter_root: Path) -> None:
    """The same prompt under two adapters and the base model, one after the other: none
    reuses another's cached blocks, each gets its own answer, and a repeat under the first
    adapter does hit its own blocks and answers the same."""
    model_dir = model_dirs["qwen2"]
    first, second, _ = adapters_for(model_dir, adapter_root)
    prompt = random_token_prompts(2, 70, 512)[1]  # 70 tokens: four full blocks of 16
    llm = LLM(str(model_dir), enable_lora=True, max_loras=2, max_lora_rank=32, block_size=16)

    def run(lora: LoRARequest | None) -> tuple[list[int], int]:
        out = llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=lora)[0]
        return out.outputs[0].token_ids, out.num_cached_tokens

    answer_1, cached_1 = run(first)
    answer_2, cached_2 = run(second)
    answer_base, cached_base = run(None)
    again_1, cached_again = run(first)
    assert (cached_1, cached_2, cached_base) == (0, 0, 0)
    assert cached_again == 64 and again_1 == answer_1
    assert len({tuple(answer_1), tuple(answer_2), tuple(answer_base)}) == 3
    assert answer_2 == peft_greedy(model_dir, Path(second.path), [prompt], MAX_TOKENS)[0]


def test_bad_adapters_are_refused(
    model_dirs: dict[str, Path], adapter_root: Path, tmp_path: Path
) -> None:
    """Each bad adapter is a LoRAAdapterError (a ValueError) for its request alone; the
    engine then serves the good adapter as before."""
    model_dir = model_dirs["llama"]
    good = adapters_for(model_dir, adapter_root)[0]  # rank 8
    llm = LLM(str(model_dir), enable_lora=True, max_loras=1, max_lora_rank=8)
    prompt = [5, 6, 7, 8]
    wide = adapters_for(model_dir, adapter_root)[1]  # rank 16
    other_base = adapters_for(model_dirs["qwen3"], adapter_root)[0]  # head_dim 32: other shapes
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good.path, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00not safetensors")
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 8}))
    dora = tmp_path / "dora"
    shutil.copytree(good.path, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    cases = {
        "max_lora_rank": LoRARequest("wide", 2, wide.path),
        "another base model": LoRARequest("qwen3", 3, other_base.path),
        "not a readable safetensors": LoRARequest("corrupt", 4, str(corrupt)),
        "has no adapter_model.safetensors": LoRARequest("missing", 5, str(missing)),
        "is not a directory": LoRARequest("nowhere", 6, str(tmp_path / "nowhere")),
        "use_dora": LoRARequest("dora", 7, str(dora)),
        "already names adapter": LoRARequest("clash", good.int_id, wide.path),
    }
    llm.engine.add_lora(good)  # registered ahead of its requests, as a service would
    for message, lora in cases.items():
        with pytest.raises(LoRAAdapterError, match=message):
            llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=lora)
        with pytest.raises(LoRAAdapterError, match=message):
            llm.engine.add_lora(lora)
    assert llm.engine.list_loras() == [good]
    assert not llm.engine.has_unfinished_requests()
    expected = peft_greedy(model_dir, Path(good.path), [prompt], MAX_TOKENS)[0]
    out = llm.generate([prompt, prompt], GREEDY, use_tqdm=False, lora_request=[good, None])
    assert out[0].outputs[0].token_ids == expected
    assert out[1].outputs[0].token_ids != expected
    with pytest.raises(ValueError, match="lora requests for"):
        llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=[good, None])


def test_lora_needs_enable_lora(model_dirs: dict[str, Path], adapter_root: Path) -> None:
    model_dir = model_dirs["llama"]
    llm = LLM(str(model_dir))
    with pytest.raises(InvalidRequestError, match="enable_lora"):
        llm.generate(
            [[5, 6]], GREEDY, use_tqdm=False, lora_request=adapters_for(model_dir, adapter_root)[0]
        )
    with pytest.raises(ValueError, match="int_id"):
        LoRARequest("x", 0, "/tmp")


def test_adapter_from_s3(
    model_dirs: dict[str, Path],
    adapter_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ``s3://`` adapter is downloaded once (boto3, S3 settings from the environment) and
    answers as the same adapter from a local path."""
    model_dir = model_dirs["llama"]
    local = adapters_for(model_dir, adapter_root)[0]
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="adapters")
        for file in Path(local.path).iterdir():
            s3.upload_file(str(file), "adapters", f"team/r8/{file.name}")
        llm = LLM(
            str(model_dir), enable_lora=True, max_lora_rank=8, lora_download_dir=str(tmp_path)
        )
        remote = LoRARequest("r8-s3", 9, "s3://adapters/team/r8")
        prompt = [9, 10, 11, 12, 13]
        out = llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=remote)[0]
        expected = peft_greedy(model_dir, Path(local.path), [prompt], MAX_TOKENS)[0]
        assert out.outputs[0].token_ids == expected
        with pytest.raises(LoRAAdapterError, match="cannot download"):
            llm.generate(
                [prompt],
                GREEDY,
                use_tqdm=False,
                lora_request=LoRARequest("x", 10, "s3://adapters/none"),
            )
    finally:
        server.stop()
