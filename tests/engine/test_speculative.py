"""Speculative decoding: greedy outputs token-identical with and without drafts (n-gram, a
draft model equal to the target, a random draft), bad configs refused, stats counted.

Exactness is checked against transformers on the parity corpus (and so against the engine
without speculation, which the parity tests hold to the same bar), and against the engine
without speculation on prompts that repeat themselves, where n-gram drafts are mostly right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import EngineConfigError
from infra.harness.tiny_models import build_tiny_model, model_variant
from tests.engine.test_greedy_parity import NUM_PROMPTS, reference

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
# A small cache and token budget: long prompts are chunked and requests get preempted.
TIGHT: dict[str, Any] = dict(block_size=16, num_kv_blocks=30, max_num_batched_tokens=64)


@pytest.fixture(scope="module")
def random_draft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with other random weights than the targets: its drafts are ~never right."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("draft") / "llama", seed=7)


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_dir: Path) -> tuple[LLM, LLM]:
    """SmolLM2 without and with n-gram speculation, shared by this module's text tests."""
    plain = LLM(str(smollm2_dir), dtype="float32", device="cpu")
    return plain, LLM(str(smollm2_dir), dtype="float32", device="cpu", speculative_config=NGRAM)


def repeating_prompts(vocab_size: int) -> list[list[int]]:
    """Prompts that quote themselves, so that prompt lookup finds drafts."""
    gen = torch.Generator().manual_seed(5)
    prompts = []
    for i in range(8):
        segment = torch.randint(3, vocab_size, (5 + 4 * i,), generator=gen).tolist()
        prompts.append(segment * (2 + i % 3) + segment[: i + 1])
    return prompts


def generate(model_dir: Path, prompts: list[list[int]], max_tokens: Any, **args: Any) -> Any:
    llm = LLM(str(model_dir), dtype="float32", device="cpu", **args)
    if isinstance(max_tokens, int):
        max_tokens = [max_tokens] * len(prompts)
    params = [SamplingParams(temperature=0.0, max_tokens=m) for m in max_tokens]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.engine.stats.num_kv_blocks_used == 0
    return [o.outputs[0].token_ids for o in outputs], llm.engine.stats


def check_parity_subset(model_dir: Path, step: int, **args: Any) -> Any:
    """Every ``step``-th prompt of the parity corpus (the 1-token one among them) against
    transformers' greedy outputs; returns the engine's stats."""
    prompts, max_tokens, expected = reference(model_dir, range(0, NUM_PROMPTS, step))
    got, stats = generate(model_dir, prompts, max_tokens, **args)
    assert got == expected
    return stats


@pytest.mark.parametrize("model", ["llama", "qwen2", "qwen3"])
def test_ngram_greedy_matches_transformers_on_the_parity_corpus(
    model: str, tiny_model_dirs: dict[str, Path]
) -> None:
    check_parity_subset(tiny_model_dirs[model], 3, speculative_config=NGRAM)


def test_ngram_greedy_matches_transformers_on_smollm2(smollm2_dir: Path) -> None:
    stats = check_parity_subset(smollm2_dir, 6, speculative_config=NGRAM)
    assert stats.num_draft_tokens > 0


def test_ngram_greedy_is_exact_with_preemption_and_chunked_prefill(
    tiny_model_dirs: dict[str, Path],
) -> None:
    model_dir = tiny_model_dirs["llama"]
    prompts = repeating_prompts(512)
    plain, _ = generate(model_dir, prompts, 32, **TIGHT)
    got, stats = generate(model_dir, prompts, 32, speculative_config=NGRAM, **TIGHT)
    assert got == plain
    assert stats.num_preemptions > 0 and stats.max_tokens_per_step <= 64
    assert stats.num_accepted_tokens > 0
    assert 0 < stats.acceptance_rate <= 1 and stats.mean_accepted_length > 1


def test_draft_model_equal_to_the_target_is_exact_and_always_accepted(
    tiny_model_dirs: dict[str, Path],
) -> None:
    model_dir = tiny_model_dirs["qwen3"]
    spec = {"model": str(model_dir), "num_speculative_tokens": 3}
    stats = check_parity_subset(model_dir, 3, speculative_config=spec)
    assert stats.num_draft_tokens > 0
    assert stats.acceptance_rate > 0.95


def test_random_draft_model_is_exact_and_rarely_accepted(
    tiny_model_dirs: dict[str, Path], random_draft: Path
) -> None:
    model_dir = tiny_model_dirs["qwen2"]
    prompts = repeating_prompts(512)[::2]
    plain, _ = generate(model_dir, prompts, 16, **TIGHT)
    spec = {"model": str(random_draft), "num_speculative_tokens": 3}
    got, stats = generate(model_dir, prompts, 16, speculative_config=spec, **TIGHT)
    assert got == plain
    assert stats.num_draft_tokens > 0
    assert stats.acceptance_rate < 0.2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({"method": "ngram", "num_speculative_tokens": 17}, "num_speculative_tokens"),
        ({"num_speculative_tokens": 2, "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "min"),
        ({"method": "ngram"}, "num_speculative_tokens"),
        ({"num_speculative_tokens": 2, "lookahead": 3}, "unknown"),
        ({"method": "medusa", "num_speculative_tokens": 2}, "method"),
        ({"num_speculative_tokens": 2, "disable_by_batch_size": 0}, "disable_by_batch_size"),
    ],
)
def test_bad_speculative_config_is_an_engine_config_error(
    spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(EngineConfigError, match=message):
        LLM("unused", speculative_config=spec)


def test_draft_with_another_vocabulary_is_an_engine_config_error(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    other = model_variant(tiny_model_dirs["llama"], tmp_path / "other_vocab", vocab_size=1000)
    spec = {"model": str(other), "num_speculative_tokens": 2}
    with pytest.raises(EngineConfigError, match="vocabulary"):
        LLM(str(tiny_model_dirs["llama"]), device="cpu", speculative_config=spec)


def test_disable_by_batch_size_turns_drafts_off_for_large_batches(
    tiny_model_dirs: dict[str, Path],
) -> None:
    model_dir = tiny_model_dirs["llama"]
    prompts = repeating_prompts(512)
    max_tokens = [4 + 4 * i for i in range(len(prompts))]  # the batch drains one by one
    plain, _ = generate(model_dir, prompts, max_tokens)
    off = {**NGRAM, "disable_by_batch_size": 1}
    got, stats = generate(model_dir, prompts, max_tokens, speculative_config=off)
    assert got == plain and stats.num_draft_tokens == 0
    tail_only = {**NGRAM, "disable_by_batch_size": 3}  # drafts once 2 requests are left
    got, stats = generate(model_dir, prompts, max_tokens, speculative_config=tail_only)
    assert got == plain and stats.num_draft_tokens > 0


def test_stop_strings_logprobs_and_n_see_only_accepted_tokens(
    smollm2_pair: tuple[LLM, LLM],
) -> None:
    """A stop string completed by an accepted draft ends the output there (later accepted
    tokens dropped), logprobs come one per output token, and ``n = 2`` samples agree."""
    text = "The code is 4711-AB-99. Repeat: the code is 4711-AB-99. Again: the code is"
    llm, spec = smollm2_pair
    plain = llm.generate([text], SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
    reference = plain[0].outputs[0]
    stop = reference.text[len(reference.text) // 2 :][:3]
    params = SamplingParams(temperature=0.0, max_tokens=24, stop=[stop], logprobs=1, n=2)
    expected = llm.generate([text], params, use_tqdm=False)[0].outputs
    accepted_before = spec.engine.stats.num_accepted_tokens
    got = spec.generate([text], params, use_tqdm=False)[0].outputs
    assert spec.engine.stats.num_accepted_tokens > accepted_before
    for sample in got:
        assert sample.text == expected[0].text and sample.token_ids == expected[0].token_ids
        assert sample.stop_reason == stop and sample.finish_reason == "stop"
        assert sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids)
        assert [lp.token_id for lp in sample.logprobs] == sample.token_ids


def test_constrained_outputs_roll_the_grammar_back_with_rejected_drafts(
    smollm2_pair: tuple[LLM, LLM],
) -> None:
    """Drafts of a constrained request are checked against the grammar's mask after each
    earlier draft (the matcher walks them and rolls back): outputs equal decoding without
    speculation, and drafts were accepted."""
    from engine import StructuredOutputsParams

    text = (
        "Codes: QX-4711-ALPHA-BRAVO, QX-4711-ALPHA-BRAVO-CHARLIE, QZ-99. "
        "Which code is the longest? Answer with the code:"
    )
    choices = ["QX-4711-ALPHA-BRAVO", "QX-4711-ALPHA-BRAVO-CHARLIE", "QZ-99"]
    params = [
        SamplingParams(
            temperature=0.0, max_tokens=24, structured_outputs=StructuredOutputsParams(**c)
        )
        for c in ({"choice": choices}, {"regex": r"QX-[0-9]{4}-[A-Z]+(-[A-Z]+){0,3}"})
    ]
    llm, spec = smollm2_pair
    accepted_before = spec.engine.stats.num_accepted_tokens
    expected = llm.generate([text, text], params, use_tqdm=False)
    got = spec.generate([text, text], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert got[0].outputs[0].text in choices
    assert spec.engine.stats.num_accepted_tokens > accepted_before
