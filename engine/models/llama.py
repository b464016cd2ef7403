"""The Llama-family decoder, which also runs Mistral, Qwen2 and Qwen3 checkpoints.

The families differ only in flags of ``ModelConfig``: q/k/v biases (Qwen2), a per-head RMSNorm
on q and k before RoPE (Qwen3), an explicit ``head_dim``, tied embeddings. Module and parameter
names follow the Hugging Face checkpoints, except that q/k/v and gate/up are fused
(``PACKED_MODULES`` tells the loader where each checkpoint matrix goes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.attention import AttentionMetadata, KVCache, paged_attend
from engine.models.cpu_decoder import CpuDecoder
from engine.models.layers import Embedding, Linear, RMSNorm
from engine.models.lora import LoRAContext, LoRAMapping
from engine.models.model_config import ModelConfig
from engine.models.packed_weights import PackedWeight
from kernels import build_cos_sin_cache, rotary_embedding, silu_and_mul


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        self.sizes = [q_size, kv_size, kv_size]
        self.qkv_proj = Linear(config.hidden_size, self.sizes, bias=config.qkv_bias)
        self.o_proj = Linear(q_size, [config.hidden_size], bias=config.o_proj_bias)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(
        self,
        positions: torch.Tensor,  # [num_tokens] int64
        hidden: torch.Tensor,  # [num_tokens, hidden_size]
        cos_sin_cache: torch.Tensor,  # [max_position, head_dim] fp32
        cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, hidden_size]
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.sizes, dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim))[0].view_as(q)
            k = self.k_norm(k.reshape(-1, self.head_dim))[0].view_as(k)
        q, k = rotary_embedding(positions, q, k, cos_sin_cache)
        out = paged_attend(q, k, v, cache, meta, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, [size, size], bias=config.mlp_bias)
        self.down_proj = Linear(size, [config.hidden_size], bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block; the residual add rides inside the next RMSNorm call::

    h, r = norm(h + r)  ->  attention(h)  ->  h, r = norm(h + r)  ->  mlp(h)
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos_sin_cache: torch.Tensor,
        cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)[0]
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, cos_sin_cache, cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        assert residual is not None
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    # checkpoint module name -> (our fused module, its shard index)
    PACKED_MODULES: ClassVar[dict[str, tuple[str, int]]] = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, max_position: int) -> None:
        """Build under the target device and default dtype; ``max_position`` sizes RoPE's table."""
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Linear(config.hidden_size, [config.vocab_size], bias=False)
        )
        cos_sin = build_cos_sin_cache(
            config.head_dim, max_position, config.rope_theta, config.rope_scaling
        )
        self.register_buffer("cos_sin_cache", cos_sin, persistent=False)
        self.lora_context: LoRAContext | None = None  # set by engine.models.lora.attach_lora
        self.head_packed: PackedWeight | None = None  # set by packed_weights.pack_weights
        # The whole stack in one C call for a step (fp32 CPU, panels).
        self.cpu_decoder: CpuDecoder | None = None  # set by the model runner

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        meta: AttentionMetadata,
        kv_caches: Sequence[KVCache],  # one per layer
        lora: LoRAMapping | None = None,  # each token's adapter slot (LoRA engines)
    ) -> torch.Tensor:  # [num_tokens, hidden_size]: final-norm hidden states
        assert len(kv_caches) == len(self.model.layers)
        if self.lora_context is not None:
            self.lora_context.mapping = lora
        hidden = self.model.embed_tokens(input_ids)
        if self.cpu_decoder is not None and lora is None:
            out = self.cpu_decoder.run(hidden, positions, meta, kv_caches)
            if out is not None:
                return out
        residual: torch.Tensor | None = None
        for layer, cache in zip(self.model.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, self.cos_sin_cache, cache, meta)
        return self.model.norm(hidden, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, hidden_size] -> [n, vocab_size]`` fp32 logits."""
        if self.head_packed is not None:
            return self.head_packed.linear(hidden).float()
        head = self.model.embed_tokens if self.lm_head is None else self.lm_head
        return F.linear(hidden, head.weight).float()
