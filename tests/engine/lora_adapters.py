"""Seeded random PEFT LoRA adapters for the tiny test models, and their transformers + peft
greedy outputs: the reference the engine's adapter outputs must equal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tests.engine.hf_reference import PreTrainedModel, hf_greedy, load_hf_model

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """One adapter's shape and seed; ``std`` sizes B, and A at a width of 64 (A's spread
    shrinks as ``1/sqrt(in_features)``), so the delta is of the order of the base projection
    on the tiny models and on SmolLM2: answers change, nothing overflows."""

    rank: int
    alpha: int
    seed: int
    use_rslora: bool = False
    std: float = 0.1


# Ranks 8/16/32, three different scalings (alpha / r = 2, 1; rslora alpha / sqrt(r)).
SPECS = (
    AdapterSpec(rank=8, alpha=16, seed=1),
    AdapterSpec(rank=16, alpha=16, seed=2),
    AdapterSpec(rank=32, alpha=8, seed=3, use_rslora=True, std=0.08),
)


def build_random_adapter(base_dir: Path, out_dir: Path, spec: AdapterSpec) -> Path:
    """Save a PEFT adapter on every q/k/v/o/gate/up/down projection of ``base_dir`` with
    seeded random, non-zero A and B (PEFT's own init has B = 0: no change at all)."""
    if (out_dir / "adapter_model.safetensors").exists():
        return out_dir
    base = load_hf_model(base_dir)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        use_rslora=spec.use_rslora,
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                std = spec.std * ((64 / param.shape[1]) ** 0.5 if "lora_A" in name else 1.0)
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(str(out_dir))
    return out_dir


def load_peft_model(base_dir: Path, adapter_dir: Path) -> PreTrainedModel:
    """transformers' model with the adapter read back from disk by peft."""
    model = PeftModel.from_pretrained(load_hf_model(base_dir), adapter_dir)
    model.eval()
    return model


def peft_greedy(
    base_dir: Path, adapter_dir: Path | None, prompts: list[list[int]], max_tokens: int
) -> list[list[int]]:
    """Greedy outputs of each prompt alone: base transformers when ``adapter_dir`` is None."""
    model = (
        load_hf_model(base_dir) if adapter_dir is None else load_peft_model(base_dir, adapter_dir)
    )
    return [hf_greedy(model, p, max_tokens) for p in prompts]
