"""A model's shape, read from a Hugging Face ``config.json`` into one normalised record.

Checkpoints of the same decoder family disagree on spelling: transformers 5 writes
``rope_parameters: {rope_theta, rope_type, ...}`` where older files carry ``rope_theta`` and
``rope_scaling``; ``head_dim`` is explicit (Qwen3) or ``hidden_size // num_attention_heads``;
``eos_token_id`` is an int or a list, and ``generation_config.json`` may add more. The model
code reads only ``ModelConfig``, never the raw dict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelConfigError(ValueError):
    """The model directory is missing, malformed, or describes a model we cannot run."""


@dataclass(frozen=True, slots=True)
class _Family:
    """What an architecture does differently from plain Llama."""

    qkv_bias: bool | None  # None: follow the config's ``attention_bias``
    qk_norm: bool  # RMSNorm over each head of q and k before RoPE (Qwen3)


SUPPORTED_ARCHITECTURES: dict[str, _Family] = {
    "LlamaForCausalLM": _Family(qkv_bias=None, qk_norm=False),
    "MistralForCausalLM": _Family(qkv_bias=None, qk_norm=False),
    "Qwen2ForCausalLM": _Family(qkv_bias=True, qk_norm=False),
    "Qwen3ForCausalLM": _Family(qkv_bias=None, qk_norm=True),
}


@dataclass(slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # None for plain RoPE; else has ``rope_type``
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    qk_norm: bool
    eos_token_ids: list[int]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ModelConfig:
        """Read ``config.json`` (and ``generation_config.json`` when present) from a directory."""
        path = Path(model_dir)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelConfigError(f"{path} is not a model directory: it has no config.json")
        generation_file = path / "generation_config.json"
        generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
        return cls.from_dict(json.loads(config_file.read_text()), generation)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], generation: dict[str, Any] | None = None
    ) -> ModelConfig:
        architecture = _architecture(raw)
        family = SUPPORTED_ARCHITECTURES[architecture]
        if raw.get("hidden_act", "silu") != "silu":
            raise ModelConfigError(f"hidden_act {raw['hidden_act']!r} is not supported (only silu)")
        num_heads = _required(raw, "num_attention_heads")
        num_kv_heads = raw.get("num_key_value_heads") or num_heads
        if num_heads % num_kv_heads:
            raise ModelConfigError(
                f"num_attention_heads ({num_heads}) is not a multiple of "
                f"num_key_value_heads ({num_kv_heads})"
            )
        hidden_size = _required(raw, "hidden_size")
        rope_theta, rope_scaling = _rope(raw)
        attention_bias = bool(raw.get("attention_bias", False))
        return cls(
            architecture=architecture,
            vocab_size=_required(raw, "vocab_size"),
            hidden_size=hidden_size,
            intermediate_size=_required(raw, "intermediate_size"),
            num_layers=_required(raw, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=raw.get("head_dim") or hidden_size // num_heads,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=_max_positions(raw),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=attention_bias if family.qkv_bias is None else family.qkv_bias,
            # Qwen2 biases q/k/v only; where ``attention_bias`` applies, o_proj has one too.
            o_proj_bias=attention_bias and family.qkv_bias is None,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=family.qk_norm,
            eos_token_ids=_eos_token_ids(raw, generation or {}),
        )


def _architecture(raw: dict[str, Any]) -> str:
    names = raw.get("architectures") or []
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return str(name)
    raise ModelConfigError(
        f"unsupported model architecture {names or '(none given)'}; "
        f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
    )


def _required(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"config.json needs a positive integer {key!r}, got {value!r}")
    return value


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_scaling)`` from either spelling; plain RoPE gives ``None`` scaling."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling: dict[str, Any] | None = params
    else:
        theta = raw.get("rope_theta", 10000.0)
        scaling = raw.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":
            scaling = None
        elif kind not in ("linear", "llama3"):
            raise ModelConfigError(f"rope scaling type {kind!r} is not supported")
        else:
            extra = {k: v for k, v in scaling.items() if k not in ("rope_theta", "type")}
            scaling = {"rope_type": kind, **extra}
    return float(theta), scaling


def _max_positions(raw: dict[str, Any]) -> int:
    """The longest context we serve exactly.

    We run full attention only; a sliding-window model (Mistral v0.1) computes the same thing
    while a sequence fits in its window, so the window caps the context.
    """
    limit = _required(raw, "max_position_embeddings")
    window = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
    if isinstance(window, int) and 0 < window < limit:
        return window
    return limit


def _eos_token_ids(raw: dict[str, Any], generation: dict[str, Any]) -> list[int]:
    """EOS ids of ``generation_config.json`` first (what ``generate`` stops on), then config's."""
    ids: list[int] = []
    for source in (generation.get("eos_token_id"), raw.get("eos_token_id")):
        for token in source if isinstance(source, list) else [source]:
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids
