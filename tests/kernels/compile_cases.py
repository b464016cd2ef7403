"""The launches the compile gate compiles: each kernel family at the shapes the engine runs.

A case calls a family's real launcher on small CPU tensors laid out as the engine lays them
out (q, k and v are views of one fused qkv projection; logits are fp32), so what gets
compiled is whatever that launcher picks, never a copy of its numbers.

Which launches. The engine runs bf16 and fp16 models with head sizes 64, 80, 96 and 128, GQA
groups 1 to 8, cache blocks of 16 and 32 tokens, and steps from a one-token decode (against
a CUDA graph's full context) to a 2048-token prefill chunk. Crossing all of that gives about
a thousand distinct paged-attention kernels per target, at one to several seconds of
compiling each. The gate compiles instead every attention *tile configuration* that
``attention_tiles`` can return (the constexprs that size registers and shared memory: rows,
keys per iteration, padded head, warps), each on both targets, and deals the remaining axes
(dtype, head size within its padding, group, block size) out over those cases in turn so that
each value of each is compiled on both targets too. The small kernels compile once per model
shape: the three shipped model configs plus the head sizes they lack.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import triton

from engine.models.model_config import ModelConfig
from kernels.activation import silu_and_mul_triton
from kernels.attention import PagedAttentionInputs
from kernels.attention_triton import AttentionTiles, attention_tiles, paged_attention_triton
from kernels.kv_cache import store_kv_cache_triton
from kernels.lora import lora_expand_triton, lora_shrink_triton
from kernels.norm import rms_norm_triton
from kernels.rotary import rotary_embedding_triton
from kernels.sampling import sample_gumbel_triton

MODEL_CONFIGS = Path(__file__).parents[2] / "benchmarks" / "model_configs"

DTYPES = ("bfloat16", "float16")
HEAD_SIZES = (64, 80, 96, 128)
GROUPS = tuple(range(1, 9))
BLOCK_SIZES = (16, 32)
MAX_NUM_BATCHED_TOKENS = 2048  # the largest prefill chunk a step schedules
MAX_MODEL_LEN = 8192  # decode graphs are captured with the context bound of the model
NUM_TOKENS = 4  # tokens of the small kernels' launches: no constexpr depends on it
LORA_RANKS = (8, 16, 32, 64)  # max_lora_rank values: the padded rank is a constexpr
LORA_NUM_TOKENS = (4, 64)  # a decode step's few rows per slot, and prefill chunks


@dataclass(frozen=True, slots=True)
class Case:
    """One call of a family's launcher: ``launch(**params)`` builds its tensors and calls it."""

    family: str
    launch: Callable[..., None]
    params: dict[str, Any] = field(hash=False)

    @property
    def label(self) -> str:
        return " ".join([self.family, *(f"{k}={v}" for k, v in self.params.items())])

    def run(self) -> None:
        self.launch(**self.params)


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def __str__(self) -> str:
        return self.name


def shipped_model_shapes() -> list[ModelShape]:
    shapes = []
    for path in sorted(MODEL_CONFIGS.iterdir()):
        c = ModelConfig.from_pretrained(path)
        shape = (c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim)
        shapes.append(ModelShape(path.name, *shape, c.vocab_size))
    return shapes


def _qkv(shape: ModelShape, dtype: str) -> tuple[torch.Tensor, ...]:
    """q, k, v as the engine has them: head-shaped views of one fused projection's output."""
    q_size, kv_size = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    qkv = torch.empty(NUM_TOKENS, q_size + 2 * kv_size, dtype=getattr(torch, dtype))
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    heads = (shape.num_heads, shape.num_kv_heads, shape.num_kv_heads)
    return tuple(
        t.reshape(NUM_TOKENS, h, shape.head_dim) for t, h in zip((q, k, v), heads, strict=True)
    )


def launch_attention(
    dtype: str, head_size: int, group: int, block_size: int, max_query_len: int, max_seq_len: int
) -> None:
    """One request of ``max_query_len`` new tokens at context ``max_seq_len``, one KV head
    (the head count is a grid axis, not a constexpr)."""
    num_blocks = triton.cdiv(max_seq_len, block_size)
    query = torch.empty(max_query_len, group, head_size, dtype=getattr(torch, dtype))
    k_cache = torch.empty(num_blocks, block_size, 1, head_size, dtype=query.dtype)
    batch = PagedAttentionInputs(
        query,
        k_cache,
        torch.empty_like(k_cache),
        torch.zeros(1, num_blocks, dtype=torch.int32),
        torch.tensor([0, max_query_len], dtype=torch.int32),
        torch.tensor([max_seq_len], dtype=torch.int32),
        max_query_len,
        max_seq_len,
        head_size**-0.5,
    )
    paged_attention_triton(batch)


def launch_kv_cache(dtype: str, shape: ModelShape, block_size: int) -> None:
    """The key comes contiguous out of the rotary kernel, the value as a qkv view."""
    _, key, value = _qkv(shape, dtype)
    cache = torch.empty(2, block_size, shape.num_kv_heads, shape.head_dim, dtype=key.dtype)
    slots = torch.arange(NUM_TOKENS, dtype=torch.int64)
    store_kv_cache_triton(key.contiguous(), value, cache, torch.empty_like(cache), slots)


def launch_rotary(dtype: str, shape: ModelShape) -> None:
    query, key, _ = _qkv(shape, dtype)
    cos_sin_cache = torch.empty(MAX_MODEL_LEN, shape.head_dim, dtype=torch.float32)
    positions = torch.arange(NUM_TOKENS, dtype=torch.int64)
    rotary_embedding_triton(positions, query, key, cos_sin_cache)


def launch_norm(dtype: str, hidden: int, residual: bool) -> None:
    """``hidden`` is a model's hidden size, or its head size for Qwen3's q/k norm."""
    x = torch.empty(NUM_TOKENS, hidden, dtype=getattr(torch, dtype))
    rms_norm_triton(x, torch.empty(hidden, dtype=x.dtype), 1e-6, x.clone() if residual else None)


def launch_silu(dtype: str, intermediate: int) -> None:
    silu_and_mul_triton(torch.empty(NUM_TOKENS, 2 * intermediate, dtype=getattr(torch, dtype)))


def launch_sampling(vocab_size: int) -> None:
    """The sampler hands the kernel the fp32 logits of the rows it samples."""
    logits = torch.empty(NUM_TOKENS, vocab_size, dtype=torch.float32)
    sample_gumbel_triton(logits, torch.ones(NUM_TOKENS), seed=0)


def lora_projections(shape: ModelShape) -> dict[str, list[int]]:
    """The shard sizes of each projection LoRA adapts, fused as the engine fuses them."""
    q_size, kv_size = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return {
        "qkv_proj": [q_size, kv_size, kv_size],
        "o_proj": [shape.hidden_size],
        "gate_up_proj": [shape.intermediate_size] * 2,
        "down_proj": [shape.hidden_size],
    }


def _lora_in_features(shape: ModelShape, projection: str) -> int:
    if projection == "o_proj":
        return shape.num_heads * shape.head_dim
    return shape.intermediate_size if projection == "down_proj" else shape.hidden_size


def launch_lora(dtype: str, shape: ModelShape, projection: str, rank: int, num_tokens: int) -> None:
    """Shrink then expand for one projection, two adapter slots, the tokens split between
    them (the mapping's values change no constexpr)."""
    torch_dtype = getattr(torch, dtype)
    shard_sizes = lora_projections(shape)[projection]
    in_features, num_slots = _lora_in_features(shape, projection), 2
    x = torch.empty(num_tokens, in_features, dtype=torch_dtype)
    lora_a = torch.empty(num_slots, len(shard_sizes) * rank, in_features, dtype=torch_dtype)
    lora_b = torch.empty(num_slots, sum(shard_sizes), rank, dtype=torch_dtype)
    sorted_ids = torch.arange(num_tokens, dtype=torch.int32)
    slot_start = torch.tensor([0, num_tokens // 2, num_tokens], dtype=torch.int32)
    shrunk = lora_shrink_triton(x, lora_a, sorted_ids, slot_start)
    offsets = tuple(itertools.accumulate(shard_sizes, initial=0))
    y = torch.empty(num_tokens, sum(shard_sizes), dtype=torch_dtype)
    lora_expand_triton(y, shrunk, lora_b, offsets, sorted_ids, slot_start)


def lora_cases() -> list[Case]:
    """Every projection of every shipped model, with the ranks, token counts and dtypes
    dealt out over them in turn."""
    cases = []
    for i, shape in enumerate(shipped_model_shapes()):
        for j, projection in enumerate(lora_projections(shape)):
            params = dict(dtype=_dtype(i, j), shape=shape, projection=projection)
            rank = LORA_RANKS[(i + j) % len(LORA_RANKS)]
            num_tokens = LORA_NUM_TOKENS[(i + j // 2) % len(LORA_NUM_TOKENS)]
            params |= dict(rank=rank, num_tokens=num_tokens)
            cases.append(Case("lora", launch_lora, params))
    return cases


def step_shapes() -> Iterator[tuple[int, int]]:
    """(max_query_len, max_seq_len) of the steps the engine can run, one per power of two
    (the launcher rounds both up to one): decodes to prefill chunks, the longest context
    first, so that a one-token step is a CUDA graph's decode (full-width block table)."""
    top_q, top_seq = int(math.log2(MAX_NUM_BATCHED_TOKENS)), int(math.log2(MAX_MODEL_LEN))
    for q_exp in range(top_q + 1):
        for seq_exp in range(top_seq, q_exp - 1, -1):
            yield 2**q_exp, 2**seq_exp


def attention_cases() -> list[Case]:
    """One launch per tile configuration ``attention_tiles`` returns for any engine step, the
    other axes dealt out in turn (see the module docstring)."""
    step_for: dict[tuple[AttentionTiles, int, int], tuple[int, int]] = {}
    for g, h, step in itertools.product(GROUPS, HEAD_SIZES, step_shapes()):
        step_for.setdefault((attention_tiles(g, h, *step), g, h), step)
    dtypes_and_blocks = itertools.cycle(itertools.product(DTYPES, BLOCK_SIZES))
    groups = itertools.cycle(GROUPS)
    pad_of = lambda head_size: attention_tiles(1, head_size, 1, 1).head_pad  # noqa: E731
    heads = {pad: itertools.cycle(list(s)) for pad, s in itertools.groupby(HEAD_SIZES, pad_of)}
    # Grouped by padded head, so that each group of tiles meets every dtype and block size.
    by_head = lambda t: (t.head_pad, t.block_m, t.tile_n, t.num_warps)  # noqa: E731
    cases = []
    for tiles in sorted({key[0] for key in step_for}, key=by_head):
        head_size = next(heads[tiles.head_pad])
        turn = itertools.islice(groups, len(GROUPS))
        group = next((g for g in turn if (tiles, g, head_size) in step_for), None)
        assert group is not None, f"no group reaches {tiles} with head size {head_size}"
        dtype, block_size = next(dtypes_and_blocks)
        max_query_len, max_seq_len = step_for[tiles, group, head_size]
        params = dict(dtype=dtype, head_size=head_size, group=group, block_size=block_size)
        params |= dict(max_query_len=max_query_len, max_seq_len=max_seq_len)
        cases.append(Case("paged_attention", launch_attention, params))
    return cases


def model_shapes() -> list[ModelShape]:
    """The shipped model configs, and a shape for each head size of ``HEAD_SIZES`` they lack
    (hidden and intermediate sizes taken from the first config: only heads matter there)."""
    shipped = shipped_model_shapes()
    lacking = sorted(set(HEAD_SIZES) - {s.head_dim for s in shipped})
    base = shipped[0]
    return shipped + [dataclasses.replace(base, name=f"head_size-{h}", head_dim=h) for h in lacking]


def _dtype(*turns: int) -> str:
    """Dtypes dealt in a checkerboard over a case's indices: each meets every other value."""
    return DTYPES[sum(turns) % len(DTYPES)]


def small_kernel_cases() -> list[Case]:
    """Every small kernel at every model shape (and Qwen3's q/k norm at every head size)."""
    cases = []
    for i, shape in enumerate(model_shapes()):
        cases.append(Case("rotary_embedding", launch_rotary, dict(dtype=_dtype(i), shape=shape)))
        for j, b in enumerate(BLOCK_SIZES):
            params = dict(dtype=_dtype(i, j), shape=shape, block_size=b)
            cases.append(Case("store_kv_cache", launch_kv_cache, params))
    for i, head_size in enumerate(HEAD_SIZES):
        params = dict(dtype=_dtype(i), hidden=head_size, residual=False)
        cases.append(Case("rms_norm", launch_norm, params))
    for i, shape in enumerate(shipped_model_shapes()):
        for j, residual in enumerate((False, True)):
            params = dict(dtype=_dtype(i, j), hidden=shape.hidden_size, residual=residual)
            cases.append(Case("rms_norm", launch_norm, params))
        params = dict(dtype=_dtype(i), intermediate=shape.intermediate_size)
        cases.append(Case("silu_and_mul", launch_silu, params))
        cases.append(Case("sample_gumbel", launch_sampling, dict(vocab_size=shape.vocab_size)))
    return cases


def all_cases() -> list[Case]:
    """Attention first: its compiles are the longest."""
    return [*attention_cases(), *small_kernel_cases(), *lora_cases()]
