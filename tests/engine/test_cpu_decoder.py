"""The whole decoder stack in one C call (engine/models/cpu_decoder.py): built where it can
serve the model, bit-identical to the per-module path for every kind of step, and stepped
aside where it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine import LLM, SamplingParams
from engine.models.cpu_decoder import CpuDecoder
from kernels import Backend, set_backend
from kernels.attention import MAX_SHORT_QUERY
from kernels.cpu_library import kernel_library

pytestmark = pytest.mark.skipif(kernel_library() is None, reason="no C compiler here")

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
# Chunked prefills beside decodes, then steps of decodes alone, or of speculative verifies
# (short queries of up to 5 tokens).
SMALL: dict[str, Any] = dict(max_num_batched_tokens=64, block_size=16)


def _outputs(llm: LLM, prompts: list[list[int]]) -> list[tuple[list[int], str]]:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=3)
    done = llm.generate(prompts, params, use_tqdm=False)
    return [(list(o.outputs[0].token_ids), repr(o.outputs[0].logprobs)) for o in done]


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    # The last prompt repeats itself, so n-gram speculation finds drafts to verify.
    repeat = torch.randint(3, 100, (12,), generator=gen).tolist()
    return [torch.randint(3, 100, (n,), generator=gen).tolist() for n in (1, 5, 40, 90)] + [
        repeat * 4
    ]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("speculative", [False, True])
def test_the_decoder_gives_the_modules_tokens_and_logprobs_to_the_bit(
    tiny_model_dirs: dict[str, Path], kind: str, speculative: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qwen2 has q/k/v biases; speculation makes verify steps of up to 5 query tokens."""
    extra = {"speculative_config": NGRAM} if speculative else {}
    llm = LLM(str(tiny_model_dirs[kind]), **SMALL, **extra)  # type: ignore[arg-type]
    model = llm.engine.runner.model
    decoder = model.cpu_decoder
    assert decoder is not None
    served: list[tuple[bool, int]] = []  # (served, longest query) of each step
    real_run = CpuDecoder.run

    def counted(self: CpuDecoder, *args: Any) -> torch.Tensor | None:
        out = real_run(self, *args)
        served.append((out is not None, args[2].max_query_len))
        return out

    monkeypatch.setattr(CpuDecoder, "run", counted)
    with_decoder = _outputs(llm, _prompts())
    assert all(ok for ok, _ in served), "every step of under PANEL_MAX_ROWS tokens is served"
    assert {q > MAX_SHORT_QUERY for _, q in served} == {True, False}, "prefills and decodes"
    model.cpu_decoder = None
    llm.engine.reset_prefix_cache()
    assert _outputs(llm, _prompts()) == with_decoder


def test_built_only_where_it_can_serve(tiny_model_dirs: dict[str, Path]) -> None:
    def decoder(kind: str, **args: Any) -> CpuDecoder | None:
        llm = LLM(str(tiny_model_dirs[kind]), num_kv_blocks=32, **args)
        return llm.engine.runner.model.cpu_decoder

    assert decoder("llama") is not None
    assert decoder("qwen3") is None  # q/k norms per head: the modules run
    assert decoder("llama", cpu_packed_weights=False) is None
    assert decoder("llama", dtype="bfloat16") is None
    assert decoder("llama", enable_lora=True) is None


def test_the_torch_backend_steps_around_it(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), **SMALL)  # type: ignore[arg-type]
    expected = _outputs(llm, _prompts())
    llm.engine.reset_prefix_cache()
    set_backend(Backend.TORCH)
    try:
        calls: list[int] = []
        decoder = llm.engine.runner.model.cpu_decoder
        assert decoder is not None
        real = decoder.library

        class Spy:
            def __getattr__(self, name: str) -> Any:
                calls.append(1)
                return getattr(real, name)

        decoder.library = Spy()  # type: ignore[assignment]
        got = _outputs(llm, _prompts())
    finally:
        set_backend(Backend.AUTO)
    assert calls == []
    # The references sum in another order: the same greedy tokens, not the same bits.
    assert [t for t, _ in got] == [t for t, _ in expected]


def test_the_scratch_is_kept_between_steps_and_grows_to_the_largest(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """A step's activations come from one buffer that outlives it (a fresh one for each
    prefill chunk faulted in its pages one by one): a smaller step reuses it, a larger one
    grows it, and its arrays never overlap and start on cache lines."""
    llm = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=32)
    decoder = llm.engine.runner.model.cpu_decoder
    assert decoder is not None
    widths = decoder._widths()

    def arrays(tokens: int) -> list[tuple[int, int]]:
        scratch = decoder._scratch(tokens)
        return [(getattr(scratch, name), tokens * width * 4) for name, width in widths.items()]

    first = arrays(64)
    assert decoder.scratch is not None
    buffer = decoder.scratch.data_ptr()
    arrays(8)
    assert decoder.scratch.data_ptr() == buffer, "a smaller step reuses the buffer"
    grown = arrays(512)
    assert decoder.scratch.data_ptr() != buffer, "a larger step grows it"
    for layout in (first, grown):
        assert all(start % 64 == 0 for start, _ in layout)
        ends = [start + size for start, size in layout]
        assert all(end <= nxt for end, (nxt, _) in zip(ends, layout[1:], strict=False))
    assert ends[-1] <= decoder.scratch.data_ptr() + decoder.scratch.numel() * 4
