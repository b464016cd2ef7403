"""The model runner against Hugging Face transformers, one hand-built scheduler step at a time.

Each step is a ``SchedulerOutput`` whose block tables we allocate ourselves, so every path of
the flat varlen batch is pinned down: batched prefills of different lengths, a prefill split
over two steps, decodes beside a prefill, and a request whose leading blocks are another
request's (a prefix-cache hit). The reference is each prompt run alone through transformers.
"""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from engine.config import EngineConfig, EngineConfigError
from engine.model_runner import ModelRunner
from engine.models.model_config import ModelConfigError
from engine.request import Request, RequestId
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledRequest, SchedulerOutput
from infra.harness.tiny_models import model_variant
from kernels.kv_cache import cache_strides

KINDS = ["llama", "qwen2", "qwen3"]
BLOCK_SIZE = 4
ATOL = 1e-4


def execute(runner: ModelRunner, output: SchedulerOutput) -> torch.Tensor:
    """``prepare`` then ``forward``: fp32 logits ``[num_sampled, vocab_size]``."""
    if output.is_empty:
        return torch.empty(0, runner.model_config.vocab_size, device=runner.device)
    with torch.inference_mode():
        return runner.forward(runner.prepare(output))


@cache
def hf_model(model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@torch.inference_mode()
def hf_last_logits(model_dir: Path, token_ids: list[int]) -> torch.Tensor:
    return hf_model(model_dir)(torch.tensor([token_ids])).logits[0, -1].float()


def make_runner(model_dir: Path, **overrides: object) -> ModelRunner:
    args: dict[str, object] = dict(device="cpu", block_size=BLOCK_SIZE, num_kv_blocks=128)
    return ModelRunner(EngineConfig(model=str(model_dir), **(args | overrides)))  # type: ignore[arg-type]


class BlockTables:
    """Hands out consecutive block ids, like a block pool that never frees."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def new(self, num_tokens: int) -> list[int]:
        return [next(self._next) for _ in range(-(-num_tokens // BLOCK_SIZE))]


def random_tokens(length: int, seed: int) -> list[int]:
    return torch.randint(3, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def chunk(
    name: str, tokens: list[int], start: int, blocks: list[int], sample: bool = True
) -> ScheduledRequest:
    request = Request(RequestId(name), list(tokens), SamplingParams())
    return ScheduledRequest(request, list(tokens), start, blocks, sample)


@pytest.fixture(params=KINDS)
def model_dir(request: pytest.FixtureRequest, tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs[request.param]


def test_batched_prefills_match_hf(model_dir: Path) -> None:
    runner = make_runner(model_dir)
    prompts = [random_tokens(n, seed) for seed, n in enumerate([1, 40, 7, 13])]
    tables = BlockTables()
    step = [chunk(f"r{i}", p, 0, tables.new(len(p))) for i, p in enumerate(prompts)]
    logits = execute(runner, SchedulerOutput(step))
    assert logits.shape == (4, 512) and logits.dtype == torch.float32
    for row, prompt in zip(logits, prompts, strict=True):
        torch.testing.assert_close(row, hf_last_logits(model_dir, prompt), atol=ATOL, rtol=0)


def test_chunked_prefill_then_decodes_match_hf(model_dir: Path) -> None:
    """Step 1: first chunk of A (no sample) + all of B. Step 2: rest of A + B's decode.
    Step 3: A and B decode together, at different context lengths."""
    runner = make_runner(model_dir)
    a, b = random_tokens(30, 1), random_tokens(9, 2)
    tables = BlockTables()
    a_blocks, b_blocks = tables.new(len(a) + 1), tables.new(len(b) + 2)

    first = execute(
        runner,
        SchedulerOutput(
            [chunk("a", a[:17], 0, a_blocks, sample=False), chunk("b", b, 0, b_blocks)]
        ),
    )
    assert first.shape == (1, 512)
    torch.testing.assert_close(first[0], hf_last_logits(model_dir, b), atol=ATOL, rtol=0)

    b_next = int(first[0].argmax())
    second = execute(
        runner,
        SchedulerOutput([chunk("a", a[17:], 17, a_blocks), chunk("b", [b_next], len(b), b_blocks)]),
    )
    torch.testing.assert_close(second[0], hf_last_logits(model_dir, a), atol=ATOL, rtol=0)
    b = [*b, b_next]
    torch.testing.assert_close(second[1], hf_last_logits(model_dir, b), atol=ATOL, rtol=0)

    a_next, b_next = int(second[0].argmax()), int(second[1].argmax())
    third = execute(
        runner,
        SchedulerOutput(
            [chunk("a", [a_next], len(a), a_blocks), chunk("b", [b_next], len(b), b_blocks)]
        ),
    )
    torch.testing.assert_close(third[0], hf_last_logits(model_dir, [*a, a_next]), atol=ATOL, rtol=0)
    torch.testing.assert_close(third[1], hf_last_logits(model_dir, [*b, b_next]), atol=ATOL, rtol=0)


def test_prefix_cached_request_reads_shared_blocks(model_dir: Path) -> None:
    """B shares A's first three full blocks and computes only its own suffix."""
    runner = make_runner(model_dir)
    a, suffix = random_tokens(16, 3), random_tokens(6, 4)
    tables = BlockTables()
    a_blocks = tables.new(len(a))
    filled = execute(runner, SchedulerOutput([chunk("a", a, 0, a_blocks, sample=False)]))
    assert filled.shape == (0, 512)

    shared = 3 * BLOCK_SIZE
    b = a[:shared] + suffix
    b_blocks = a_blocks[:3] + tables.new(len(suffix))
    logits = execute(runner, SchedulerOutput([chunk("b", suffix, shared, b_blocks)]))
    torch.testing.assert_close(logits[0], hf_last_logits(model_dir, b), atol=ATOL, rtol=0)


def test_bfloat16_runner_is_close_to_float32(tiny_model_dirs: dict[str, Path]) -> None:
    model_dir = tiny_model_dirs["qwen3"]
    prompts = [random_tokens(n, seed) for seed, n in enumerate([5, 24, 11])]
    results = []
    for dtype in ("float32", "bfloat16"):
        runner = make_runner(model_dir, dtype=dtype)
        assert runner.kv_caches[0].k_cache.dtype == runner.dtype
        tables = BlockTables()
        step = [chunk(f"r{i}", p, 0, tables.new(len(p))) for i, p in enumerate(prompts)]
        results.append(execute(runner, SchedulerOutput(step)))
    fp32, bf16 = results
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert not torch.equal(bf16, fp32)


def test_empty_step_returns_no_rows(tiny_model_dirs: dict[str, Path]) -> None:
    runner = make_runner(tiny_model_dirs["llama"])
    assert execute(runner, SchedulerOutput()).shape == (0, 512)


def test_kv_cache_is_sized_from_the_memory_budget(tiny_model_dirs: dict[str, Path]) -> None:
    runner = make_runner(tiny_model_dirs["qwen3"], num_kv_blocks=None, kv_cache_memory_gb=0.001)
    # qwen3 tiny: 2 layers x (k, v) x 4 slots x 2 kv heads x 32 dims x 4 bytes = 4096 bytes
    assert runner.kv_block_bytes == 4096
    assert runner.num_kv_blocks == int(0.001 * 2**30) // 4096
    assert runner.kv_caches[1].v_cache.shape == (runner.num_kv_blocks, BLOCK_SIZE, 2, 32)
    assert len(runner.kv_caches) == 2

    with pytest.raises(EngineConfigError, match="at least 2"):
        make_runner(tiny_model_dirs["qwen3"], num_kv_blocks=None, kv_cache_memory_gb=1e-6)


def test_a_cpu_kv_cache_is_zero_aligned_and_resident_only_as_used(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """The CPU cache comes from ``calloc`` (engine/model_runner.py): zeros, 64-byte aligned,
    and a 1 GiB budget does not make 1 GiB resident before the cache is written."""
    process = psutil.Process()
    before = process.memory_info().rss
    runner = make_runner(tiny_model_dirs["qwen3"], num_kv_blocks=None, kv_cache_memory_gb=1.0)
    grown = process.memory_info().rss - before
    cache = runner.kv_caches[0].k_cache
    assert runner.num_kv_blocks * runner.kv_block_bytes > 2**30 - runner.kv_block_bytes
    assert grown < 2**28, f"{grown} bytes resident for an unused cache"
    assert all(c.k_cache.data_ptr() % 64 == 0 for c in runner.kv_caches)
    assert cache.dtype == torch.float32 and not cache[:64].any()
    cache[3].fill_(1.0)  # written pages become resident and hold what was written
    assert cache[3].eq(1.0).all() and not cache[2].any() and not cache[4].any()


def test_a_cpu_kv_cache_keeps_each_kv_heads_rows_of_a_block_together(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """Shaped ``[blocks, block_size, kv_heads, head_dim]`` like any cache, laid out
    head-major (engine/model_runner.py says why), and the C kernels take it as it is."""
    runner = make_runner(tiny_model_dirs["llama"])
    for layer in runner.kv_caches:
        k, v = layer.k_cache, layer.v_cache
        _, block_size, kv_heads, head_dim = k.shape
        assert (
            k.stride()
            == v.stride()
            == (kv_heads * block_size * head_dim, head_dim, block_size * head_dim, 1)
        )
        assert cache_strides(k, v) == k.stride()[:3]


def test_max_model_len_defaults_to_the_model_and_may_only_shrink(
    tiny_model_dirs: dict[str, Path],
) -> None:
    assert make_runner(tiny_model_dirs["llama"]).max_model_len == 1024
    assert make_runner(tiny_model_dirs["llama"], max_model_len=256).max_model_len == 256
    with pytest.raises(EngineConfigError, match="max_model_len=2048"):
        make_runner(tiny_model_dirs["llama"], max_model_len=2048)


def test_unsupported_architecture_is_a_clear_error(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model_dir = model_variant(
        tiny_model_dirs["llama"], tmp_path / "gpt2ish", architectures=["GPT2LMHeadModel"]
    )
    with pytest.raises(ModelConfigError, match=r"unsupported model architecture.*GPT2LMHeadModel"):
        make_runner(model_dir)
    assert issubclass(ModelConfigError, ValueError)


def test_warmup_batch_spans_the_scheduler_limits(tiny_model_dirs: dict[str, Path]) -> None:
    """The CUDA memory profile runs this batch; here it runs on the CPU against its own cache."""
    runner = make_runner(tiny_model_dirs["llama"], max_num_batched_tokens=40, max_num_seqs=5)
    batch = runner._warmup_batch()
    assert [s.num_new_tokens for s in batch] == [36, 1, 1, 1, 1]
    blocks = [b for s in batch for b in s.block_ids]
    assert sorted(blocks) == list(range(len(blocks)))
    logits = runner._forward_eager(
        runner.buffers.build(batch), runner._allocate_kv_caches(len(blocks))
    )
    assert logits.shape == (5, 512) and bool(logits.isfinite().all())


def test_warmup_batch_fills_the_token_budget_with_several_long_prefills(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """A budget larger than the context length: the profile must still see every token."""
    runner = make_runner(
        tiny_model_dirs["llama"], max_num_batched_tokens=100, max_num_seqs=6, max_model_len=32
    )
    lengths = [s.num_new_tokens for s in runner._warmup_batch()]
    assert lengths == [32, 32, 32, 2, 1, 1]
    assert sum(lengths) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"load_format": "pickle"}, "load_format must be one of"),
        ({"gpu_memory_utilization": 0.0}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be in \(0, 1\]"),
    ],
)
def test_bad_engine_arguments_are_refused_before_loading(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(EngineConfigError, match=message):
        EngineConfig(model="unused", **kwargs)  # type: ignore[arg-type]
