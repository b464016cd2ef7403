"""End to end: the engine's greedy tokens are the same with the Triton kernels as with torch.

Runs a tiny Llama (GQA, llama3 rope scaling, head size 16) with a token budget that chunks the
longer prompts, so steps mix prefill chunks on cached prefixes with decodes. On the CPU the
Triton kernels run interpreted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import kernels
from engine import LLM, SamplingParams


@pytest.fixture
def restore_backend() -> Iterator[None]:
    previous = kernels.get_backend()
    yield
    kernels.set_backend(previous)


def _greedy(model_dir: Path, backend: str, prompts: list[list[int]]) -> list[list[int]]:
    kernels.set_backend(backend)
    llm = LLM(
        str(model_dir), dtype="float32", device="cpu", block_size=16, max_num_batched_tokens=48
    )
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.mark.usefixtures("restore_backend")
def test_triton_backend_generates_the_same_tokens(tiny_model_dirs: dict[str, Path]) -> None:
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in (5, 70, 1)]
    expected = _greedy(tiny_model_dirs["llama"], "torch", prompts)
    assert _greedy(tiny_model_dirs["llama"], "triton", prompts) == expected
