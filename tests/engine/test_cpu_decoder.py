"""The whole decoder stack in one C call (engine/models/cpu_decoder.py): built where it can
serve the model, bit-identical to the per-module path for every kind of step, and stepped
aside where it cannot."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import engine.models.cpu_decoder as cpu_decoder
import engine.models.packed_weights as packed_weights
from engine import LLM, SamplingParams
from engine.models.cpu_decoder import CpuDecoder
from kernels import Backend, set_backend
from kernels.attention import MAX_SHORT_QUERY
from kernels.cpu_library import blas_sgemm, kernel_library

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


@dataclass(frozen=True)
class _Step:
    served: bool  # the decoder ran it (else the modules did)
    tokens: int
    longest_query: int


def _served_steps(monkeypatch: pytest.MonkeyPatch) -> list[_Step]:
    """Each step the decoder is asked to run from now on."""
    steps: list[_Step] = []
    real_run = CpuDecoder.run

    def counted(self: CpuDecoder, hidden: torch.Tensor, *args: Any) -> torch.Tensor | None:
        out = real_run(self, hidden, *args)
        steps.append(_Step(out is not None, hidden.shape[0], args[1].max_query_len))
        return out

    monkeypatch.setattr(CpuDecoder, "run", counted)
    return steps


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
    served = _served_steps(monkeypatch)
    with_decoder = _outputs(llm, _prompts())
    assert all(step.served for step in served), "every step under PANEL_MAX_ROWS is served"
    longest = {step.longest_query > MAX_SHORT_QUERY for step in served}
    assert longest == {True, False}, "prefills and decodes"
    model.cpu_decoder = None
    llm.engine.reset_prefix_cache()
    assert _outputs(llm, _prompts()) == with_decoder


@pytest.mark.skipif(blas_sgemm() is None, reason="torch has no MKL sgemm here")
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_from_panel_max_rows_the_decoder_takes_the_modules_gemm_to_the_bit(
    tiny_model_dirs: dict[str, Path], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From PANEL_MAX_ROWS tokens (640 on Intel CPUs; 16 here, on any CPU) the modules'
    projections run MKL's GEMM (F.linear), and the decoder calls the same sgemm the same way
    (counted here through a wrapper): the long chunks are served, with the modules' bits
    (qwen2's q/k/v biases go in as addmm's do)."""
    llm = LLM(str(tiny_model_dirs[kind]), **SMALL)  # type: ignore[arg-type]
    model = llm.engine.runner.model
    decoder = model.cpu_decoder
    assert decoder is not None
    for module in (packed_weights, cpu_decoder):
        monkeypatch.setattr(module, "PANEL_MAX_ROWS", 16)
    address = blas_sgemm()
    assert address is not None
    i32, f32 = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float)
    signature = ctypes.CFUNCTYPE(
        None,
        *(ctypes.c_char_p,) * 2,
        *(i32,) * 3,
        f32,
        ctypes.c_void_p,
        i32,
        ctypes.c_void_p,
        i32,
        f32,
        ctypes.c_void_p,
        i32,
    )
    real_sgemm = signature(address)
    rows: list[int] = []

    def counted_sgemm(*args: Any) -> None:
        rows.append(args[3][0])  # n: the step's tokens
        real_sgemm(*args)

    wrapper = signature(counted_sgemm)
    monkeypatch.setattr(
        cpu_decoder, "blas_sgemm", lambda: ctypes.cast(wrapper, ctypes.c_void_p).value
    )
    served = _served_steps(monkeypatch)
    with_decoder = _outputs(llm, _prompts())
    assert all(step.served for step in served)
    long_steps = [step.tokens for step in served if step.tokens >= 16]
    assert long_steps and len(long_steps) < len(served), "both kinds of step"
    assert sorted(rows) == sorted(long_steps * 4 * model.config.num_layers), "4 a layer"
    model.cpu_decoder = None
    llm.engine.reset_prefix_cache()
    assert _outputs(llm, _prompts()) == with_decoder
    # Without that GEMM, the long chunks are left to the modules, the short steps served.
    model.cpu_decoder = decoder
    llm.engine.reset_prefix_cache()
    monkeypatch.setattr(cpu_decoder, "blas_sgemm", lambda: None)
    served.clear()
    assert _outputs(llm, _prompts()) == with_decoder
    assert {(step.served, step.tokens >= 16) for step in served} == {(True, False), (False, True)}


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
