"""The whole decoder stack in one C call, for the steps of fp32 models on the CPU.

``kernels/cpu_decoder.c`` runs the same C kernels, in the same order, as the modules of
``engine/models/llama.py`` call one by one, so its hidden states are bit-identical to theirs;
it saves the Python between the calls (~50 of ~220 ms at a 32-row SmolLM2 decode step).

``CpuDecoder.of(model)`` builds the per-layer table of weight pointers once, where it can
serve the model: fp32 weights packed into panels (``Layout.PANELS``), no LoRA, no per-head
q/k norm (Qwen3 keeps the per-module path). ``run`` serves a step of any query lengths
(decodes, speculative verifies, prefill chunks: the C attention kernel takes them all) when
the kernel backend is ``auto``; otherwise it returns None and the modules run. From
``PANEL_MAX_ROWS`` tokens (on Intel CPUs) the modules' projections take MKL's GEMM
(``F.linear``), and so do the decoder's: it calls the same ``sgemm_`` with the same
arguments (``blas_sgemm``), on the plain weights the packed ones keep beside their panels.
Where that GEMM cannot be found, such steps are left to the modules.

Run by the modules, those long chunks cost ~1 s of the 64-prompt workload's ~34 on an Intel
Xeon VM (benchmarks/cpu_roofline.py) beyond their GEMMs: their activations were fresh
allocations past glibc's mmap threshold that faulted in page by page (prefill-only runs:
220,000-640,000 minor faults, 13.4-14.9 s, against 2-7 faults and 12.8-13.5 s served here),
with the Python between 240 kernel calls a step.

Its scratch (the activations between kernels, ~70 MB at a 2,048-token SmolLM2 step: the
peak of a step, now held between steps) is kept from one step to the next. Allocated each
time, a prefill chunk's arrays were larger than glibc's mmap threshold, so each came from
the kernel as fresh pages that faulted in a page at a time: 270,000-380,000 faults (up to
1.5 GB zeroed) for the nine prefill steps of the 64-prompt workload
(benchmarks/cpu_roofline.py, AMD EPYC Zen 5 VM) when the modules ran them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from engine.models.attention import AttentionMetadata, KVCache
from engine.models.packed_weights import PANEL_MAX_ROWS, Layout
from kernels import Backend, get_backend
from kernels.cpu_library import blas_sgemm, kernel_library
from kernels.kv_cache import cache_strides

if TYPE_CHECKING:
    from engine.models.layers import Linear
    from engine.models.llama import LlamaDecoderLayer, LlamaForCausalLM

_P, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class _Layer(ctypes.Structure):
    _fields_ = [
        (name, _P)
        for name in (
            "input_norm",
            "post_norm",
            "qkv",
            "qkv_bias",
            "o",
            "o_bias",
            "gate_up",
            "gate_up_bias",
            "down",
            "down_bias",
            "k_cache",
            "v_cache",
            "qkv_plain",
            "o_plain",
            "gate_up_plain",
            "down_plain",
        )
    ]


class _Dims(ctypes.Structure):
    _fields_ = [
        *((name, _I64) for name in ("hidden", "heads", "kv_heads", "head_size")),
        *((name, _I64) for name in ("intermediate", "block_size", "num_blocks")),
        *((name, _I64) for name in ("block_stride", "position_stride", "head_stride")),
        ("eps", _F32),
        ("scale", _F32),
    ]


class _Step(ctypes.Structure):
    _fields_ = [
        ("tokens", _I64),
        ("positions", _P),
        ("slots", _P),
        ("cos_sin", _P),
        ("block_table", _P),
        ("query_start_loc", _P),
        ("seq_lens", _P),
        ("table_stride", _I64),
        ("num_rows", _I64),
    ]


class _Gemm(ctypes.Structure):
    _fields_ = [("min_rows", _I64), ("sgemm", _P)]


class _Scratch(ctypes.Structure):
    _fields_ = [
        (name, _P) for name in ("residual", "normed", "qkv", "q", "k", "attn", "gate_up", "act")
    ]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _decoder_layers(model: LlamaForCausalLM) -> list[LlamaDecoderLayer]:
    return [cast("LlamaDecoderLayer", layer) for layer in model.model.layers]


def _panels(linear: Linear) -> torch.Tensor:
    assert linear.packed is not None and linear.packed.layout is Layout.PANELS
    return linear.packed.packed


def _plain(linear: Linear) -> torch.Tensor:
    """The weight ``[out, in]`` that the modules' ``F.linear`` multiplies by."""
    assert linear.packed is not None and linear.packed.weight.is_contiguous()
    return linear.packed.weight


@dataclass
class CpuDecoder:
    model: LlamaForCausalLM
    library: ctypes.CDLL
    dims: _Dims
    layers: ctypes.Array[_Layer] | None = None  # built on the first step, when caches exist
    caches_seen: tuple[int, ...] = ()  # the k-cache pointers the table was built for
    scratch: torch.Tensor | None = None  # kept between steps, grown to the largest one

    @classmethod
    def of(cls, model: LlamaForCausalLM) -> CpuDecoder | None:
        """The decoder for ``model``, or None where it cannot serve it (see module doc)."""
        config = model.config
        library = kernel_library()
        linears = [
            m
            for layer in _decoder_layers(model)
            for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj)
            + (layer.mlp.gate_up_proj, layer.mlp.down_proj)
        ]
        if (
            library is None
            or config.qk_norm
            or model.lora_context is not None
            or any(m.packed is None or m.packed.layout is not Layout.PANELS for m in linears)
        ):
            return None
        dims = _Dims(
            hidden=config.hidden_size,
            heads=config.num_heads,
            kv_heads=config.num_kv_heads,
            head_size=config.head_dim,
            intermediate=config.intermediate_size,
            eps=config.rms_norm_eps,
            scale=config.head_dim**-0.5,
        )
        return cls(model, library, dims)

    def _table(self, kv_caches: Sequence[KVCache]) -> ctypes.Array[_Layer]:
        seen = tuple(c.k_cache.data_ptr() for c in kv_caches)
        if self.layers is None or seen != self.caches_seen:
            first = kv_caches[0].k_cache
            self.dims.num_blocks, self.dims.block_size = first.shape[0], first.shape[1]
            strides = cache_strides(first, kv_caches[0].v_cache)
            assert strides is not None, "run checked the caches' strides"
            d = self.dims
            d.block_stride, d.position_stride, d.head_stride = strides
            rows = []
            for layer, cache in zip(_decoder_layers(self.model), kv_caches, strict=True):
                attn, mlp = layer.self_attn, layer.mlp
                assert cache_strides(cache.k_cache, cache.v_cache) == strides
                rows.append(
                    _Layer(
                        _ptr(layer.input_layernorm.weight),
                        _ptr(layer.post_attention_layernorm.weight),
                        _ptr(_panels(attn.qkv_proj)),
                        _ptr(attn.qkv_proj.bias),
                        _ptr(_panels(attn.o_proj)),
                        _ptr(attn.o_proj.bias),
                        _ptr(_panels(mlp.gate_up_proj)),
                        _ptr(mlp.gate_up_proj.bias),
                        _ptr(_panels(mlp.down_proj)),
                        _ptr(mlp.down_proj.bias),
                        _ptr(cache.k_cache),
                        _ptr(cache.v_cache),
                        _ptr(_plain(attn.qkv_proj)),
                        _ptr(_plain(attn.o_proj)),
                        _ptr(_plain(mlp.gate_up_proj)),
                        _ptr(_plain(mlp.down_proj)),
                    )
                )
            self.layers = (_Layer * len(rows))(*rows)
            self.caches_seen = seen
        return self.layers

    def _widths(self) -> dict[str, int]:
        """Floats per token row of each scratch array (cpu_decoder.c's Scratch)."""
        d = self.dims
        q_width, kv_width = d.heads * d.head_size, d.kv_heads * d.head_size
        return {
            "residual": d.hidden,
            "normed": d.hidden,
            "qkv": q_width + 2 * kv_width,
            "q": q_width,
            "k": kv_width,
            "attn": q_width,
            "gate_up": 2 * d.intermediate,
            "act": d.intermediate,
        }

    def _scratch(self, tokens: int) -> _Scratch:
        """Room for ``tokens`` rows in each array, carved from one buffer that outlives the
        step (see the module doc); each array starts on a cache line."""
        line = 16  # floats
        sizes = {name: -(-tokens * w // line) * line for name, w in self._widths().items()}
        need = sum(sizes.values()) + line
        if self.scratch is None or self.scratch.numel() < need:
            self.scratch = torch.empty(need, dtype=torch.float32)
        base = self.scratch.data_ptr()
        offset = -base % 64 // 4  # floats to the first cache line
        pointers = {}
        for name, size in sizes.items():
            pointers[name] = base + 4 * offset
            offset += size
        return _Scratch(**pointers)

    def run(
        self,
        hidden: torch.Tensor,  # [num_tokens, hidden_size] embeddings; overwritten
        positions: torch.Tensor,  # [num_tokens] int64
        meta: AttentionMetadata,
        kv_caches: Sequence[KVCache],
    ) -> torch.Tensor | None:  # [num_tokens, hidden_size] final-norm hidden states
        tokens = hidden.shape[0]
        if get_backend() is not Backend.AUTO:
            return None
        # From PANEL_MAX_ROWS (on Intel CPUs) the modules' projections take MKL's GEMM: so do
        # this call's, or where it has no such GEMM it leaves those steps to the modules.
        gemm = _Gemm(0, None)
        if PANEL_MAX_ROWS is not None:
            gemm = _Gemm(PANEL_MAX_ROWS, blas_sgemm())
            if gemm.sgemm is None and tokens >= PANEL_MAX_ROWS:
                return None
        first = kv_caches[0]
        if (
            meta.block_table.dtype != torch.int32
            or cache_strides(first.k_cache, first.v_cache) is None
        ):
            return None
        d = self.dims
        hidden = hidden.contiguous()
        scratch = self._scratch(tokens)
        positions = positions.to(torch.int64).contiguous()
        slots = meta.slot_mapping.to(torch.int64).contiguous()
        query_start_loc = meta.query_start_loc.to(torch.int32).contiguous()
        seq_lens = meta.seq_lens.to(torch.int32).contiguous()
        cos_sin = cast(torch.Tensor, self.model.cos_sin_cache).contiguous()
        step = _Step(
            tokens,
            positions.data_ptr(),
            slots.data_ptr(),
            cos_sin.data_ptr(),
            meta.block_table.data_ptr(),
            query_start_loc.data_ptr(),
            seq_lens.data_ptr(),
            meta.block_table.stride(0),
            seq_lens.numel(),
        )
        status = self.library.kvbatch_decoder(
            self._table(kv_caches),
            len(kv_caches),
            self.model.model.norm.weight.data_ptr(),
            ctypes.byref(d),
            ctypes.byref(step),
            ctypes.byref(scratch),
            ctypes.byref(gemm),
            hidden.data_ptr(),
            torch.get_num_threads(),
        )
        if status == -2:
            raise IndexError("a slot past the KV cache")
        if status != 0:
            raise MemoryError("the CPU attention kernel could not allocate its scores")
        return hidden
