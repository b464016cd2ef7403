"""Engine statistics: where each step's time went and how much KV context it read."""

from __future__ import annotations

from pathlib import Path

from engine import LLM, SamplingParams
from engine.stats import StepTimes


def test_step_phases_add_up_and_context_tokens_count_the_kv_read(
    tiny_model_dirs: dict[str, Path],
) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), device="cpu", num_kv_blocks=64, block_size=4)
    llm.generate([[5] * 10, [6] * 3], SamplingParams(max_tokens=4), use_tqdm=False)
    stats = llm.engine.stats
    # step 1 prefills both (10 + 3 positions), then 3 decode steps at 11+4, 12+5, 13+6
    contexts = [s.num_context_tokens for s in stats.recent]
    assert contexts == [13, 15, 17, 19]
    for step in stats.recent:
        assert step.step_time_s > 0
        assert min(getattr(step.times, f) for f in StepTimes.__slots__) >= 0
        assert not step.used_cuda_graph  # CPU
    assert abs(stats.busy_time_s - sum(s.step_time_s for s in stats.recent)) < 1e-9
    assert stats.phase_times.forward_s > 0
    assert [s.is_decode for s in stats.recent] == [False, True, True, True]
    data = stats.as_dict()
    assert data["time_forward_s"] == stats.phase_times.forward_s
    assert data["num_cuda_graph_steps"] == 0


def test_generated_tokens_count_the_token_sampled_at_the_end_of_prefill(
    tiny_model_dirs: dict[str, Path],
) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), device="cpu", num_kv_blocks=64, block_size=4)
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    outputs = llm.generate([[5] * 10, [6] * 3], params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [4, 4]
    stats = llm.engine.stats
    assert stats.num_generated_tokens == 8
    # 13 prompt positions in the prefill step, then each decode step reads back one
    # sampled token per request (3 steps x 2): prompt work excludes those.
    assert stats.num_prompt_tokens == 13
    assert stats.num_batched_tokens == 13 + 6
    assert stats.mean_tokens_per_step == 19 / 4
