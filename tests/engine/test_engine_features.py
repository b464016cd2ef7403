"""Acceptance: prefix cache, seeded sampling, logprobs, stop strings, n > 1, input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import LLM, InvalidRequestError, SamplingParams, SamplingParamsError
from tests.engine.hf_reference import hf_log_softmax, load_hf_model
from tests.engine.prompts import random_token_prompts


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> LLM:
    return LLM(str(smollm2_dir), dtype="float32", device="cpu", block_size=16)


def test_prefix_cache_hits_keep_outputs(tiny_model_dirs: dict[str, Path]) -> None:
    model = str(tiny_model_dirs["llama"])
    shared = random_token_prompts(1, 300, 512)[0][:300]
    suffixes = random_token_prompts(8, 40, 512)
    prompts = [shared + s for s in suffixes]
    params = SamplingParams(temperature=0.0, max_tokens=8)

    cold = LLM(model, device="cpu", enable_prefix_caching=False)
    expected = [o.outputs[0].token_ids for o in cold.generate(prompts, params, use_tqdm=False)]
    assert cold.engine.stats.prefix_cache_hits == 0

    warm = LLM(model, device="cpu", block_size=16)
    first = warm.generate(prompts[:1], params, use_tqdm=False)
    rest = warm.generate(prompts[1:], params, use_tqdm=False)
    got = [o.outputs[0].token_ids for o in first + rest]
    assert got == expected
    stats = warm.engine.stats
    # Every later prompt finds at least the 18 full blocks of the shared 300-token prefix.
    assert stats.prefix_cache_hits >= 7 * 18 * 16
    assert all(o.num_cached_tokens >= 18 * 16 for o in rest)
    assert 0.0 < stats.prefix_hit_rate < 1.0


def test_seeded_sampling_is_independent_of_batch(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["qwen2"]), device="cpu")
    target = random_token_prompts(1, 50, 512)[0]
    others = random_token_prompts(12, 120, 512)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=24)
    noisy = SamplingParams(temperature=1.0, max_tokens=30)

    alone = llm.generate([target], seeded, use_tqdm=False)[0].outputs[0].token_ids
    front = llm.generate([target, *others], [seeded] + [noisy] * 12, use_tqdm=False)
    back = llm.generate([*others[:5], target], [noisy] * 5 + [seeded], use_tqdm=False)
    assert front[0].outputs[0].token_ids == alone
    assert back[-1].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=99, max_tokens=24)
    assert llm.generate([target], other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


@pytest.mark.parametrize("model", ["qwen3", "smollm2"])
def test_logprobs_match_transformers(
    model: str, tiny_model_dirs: dict[str, Path], smollm2_dir: Path
) -> None:
    model_dir = smollm2_dir if model == "smollm2" else tiny_model_dirs[model]
    llm = LLM(str(model_dir), dtype="float32", device="cpu")
    prompt = random_token_prompts(3, 60, 500)[2]
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=5)
    out = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)

    reference = hf_log_softmax(load_hf_model(model_dir), prompt + out.token_ids)
    for step, entry in enumerate(out.logprobs):
        row = reference[len(prompt) - 1 + step]
        assert entry.token_id == out.token_ids[step]
        torch.testing.assert_close(entry.logprob, row[entry.token_id].item(), atol=1e-4, rtol=0)
        top_ids = [t for t, _ in entry.top]
        assert top_ids == row.topk(5).indices.tolist()
        top_values = torch.tensor([v for _, v in entry.top])
        torch.testing.assert_close(top_values, row.topk(5).values, atol=1e-4, rtol=0)


def test_stop_strings(smol: LLM) -> None:
    conversation = [{"role": "user", "content": "List the planets of the solar system."}]
    free = smol.chat([conversation], SamplingParams(temperature=0.0, max_tokens=40), False)
    text = free[0].outputs[0].text
    assert len(text) > 20
    stop = text[12:16]
    first = text.index(stop)

    cut = smol.chat(
        [conversation], SamplingParams(temperature=0.0, max_tokens=40, stop=[stop]), False
    )[0].outputs[0]
    assert cut.text == text[:first]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert len(cut.token_ids) < len(free[0].outputs[0].token_ids)

    kept = smol.chat(
        [conversation],
        SamplingParams(
            temperature=0.0, max_tokens=40, stop=[stop], include_stop_str_in_output=True
        ),
        False,
    )[0].outputs[0]
    assert kept.text == text[: first + len(stop)]


def test_n_samples_share_prompt_and_match_single_runs(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["qwen3"]), device="cpu", block_size=16)
    prompt = random_token_prompts(2, 100, 512)[1]
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    samples = [o.token_ids for o in out.outputs]
    assert len({tuple(s) for s in samples}) == 3, "three seeds should give three samples"
    # The children reused the parent's full prompt blocks rather than computing them again.
    assert llm.engine.stats.num_prompt_tokens < 2 * len(prompt)
    for i, sample in enumerate(samples):
        single = SamplingParams(temperature=1.0, seed=7 + i, max_tokens=12)
        assert llm.generate([prompt], single, use_tqdm=False)[0].outputs[0].token_ids == sample


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-2),
        dict(min_p=2.0),
        dict(n=0),
        dict(max_tokens=0),
        dict(min_tokens=5, max_tokens=2),
        dict(logprobs=21),
        dict(presence_penalty=3.0),
        dict(frequency_penalty=-3.0),
        dict(repetition_penalty=0.0),
        dict(stop=[""]),
        dict(logit_bias={5: 500.0}),
        dict(seed=2**64),
    ],
)
def test_invalid_sampling_params_raise_clear_errors(kwargs: dict) -> None:
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(**kwargs)
    assert next(iter(kwargs)) in str(info.value)


def test_bad_requests_raise_clear_errors(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), device="cpu", max_model_len=256, num_kv_blocks=8)
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    cases = [
        ([1] * 300, greedy, "context length"),
        ([1] * 250, SamplingParams(max_tokens=10), "context length"),
        ([1] * 200, greedy, "KV blocks"),
        ([], greedy, "empty"),
        ([1, 99999], greedy, "token ids"),
        ("text prompt", greedy, "no tokenizer"),
        ([1, 2, 3], SamplingParams(stop=["x"]), "tokenizer"),
        ([1, 2, 3], SamplingParams(stop_token_ids=[10**6]), "stop_token_ids"),
        ([1, 2, 3], SamplingParams(logit_bias={10**6: 1.0}), "logit_bias"),
    ]
    for prompt, params, message in cases:
        with pytest.raises(InvalidRequestError, match=message):
            llm.generate([prompt], params, use_tqdm=False)  # type: ignore[list-item, arg-type]
        assert not llm.engine.has_unfinished_requests()
    # The engine is still usable after refusing requests.
    assert len(llm.generate([[5, 6, 7]], greedy, use_tqdm=False)[0].outputs[0].token_ids) >= 1


def test_reset_prefix_cache_makes_the_same_prompt_compute_again(
    tiny_model_dirs: dict[str, Path],
) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), device="cpu", num_kv_blocks=64, block_size=4)
    prompt = list(range(3, 40))
    params = SamplingParams(max_tokens=2, temperature=0.0)
    first = llm.generate([prompt], params, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    assert llm.generate([prompt], params, use_tqdm=False)[0].num_cached_tokens == 36
    llm.engine.reset_prefix_cache()
    again = llm.generate([prompt], params, use_tqdm=False)[0]
    assert again.num_cached_tokens == 0
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    llm.engine.add_request("busy", prompt, params)
    llm.engine.step()
    with pytest.raises(RuntimeError, match="no request runs"):
        llm.engine.reset_prefix_cache()
