"""Compute kernels the engine calls: one function per operation, two implementations each.

Every operation has a plain-PyTorch reference (used on the CPU and by the tests) and, where
one exists, a Triton kernel (used on CUDA). ``set_backend`` overrides the choice; the engine
never names an implementation, so switching backends changes nothing else.
"""

from kernels.dispatch import (
    Backend,
    attention_reads_plan,
    get_backend,
    lora_expand,
    lora_shrink,
    paged_attention,
    prepare,
    rms_norm,
    rotary_embedding,
    sample_gumbel,
    set_backend,
    silu_and_mul,
    store_kv_cache,
    use_triton,
)
from kernels.rotary import build_cos_sin_cache

__all__ = [
    "Backend",
    "attention_reads_plan",
    "build_cos_sin_cache",
    "get_backend",
    "lora_expand",
    "lora_shrink",
    "paged_attention",
    "prepare",
    "rms_norm",
    "rotary_embedding",
    "sample_gumbel",
    "set_backend",
    "silu_and_mul",
    "store_kv_cache",
    "use_triton",
]
