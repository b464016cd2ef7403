"""Reading a PEFT LoRA adapter and laying it out for the model's slot stacks.

A PEFT adapter directory holds ``adapter_config.json`` (rank ``r``, ``lora_alpha``, target
modules) and ``adapter_model.safetensors`` with, per adapted projection::

    base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight   [r, in]
    base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight   [out, r]

and the projection computes ``W x + scaling * B (A x)``, ``scaling = lora_alpha / r`` (or
``lora_alpha / sqrt(r)`` with ``use_rslora``). Everything is checked against the base model
here, when a request first names the adapter, so that a bad adapter is a clear error for that
request, never a failure inside a step.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from engine.lora_request import LoRAAdapterError, LoRARequest
from engine.models.layers import Linear
from engine.models.lora import LORA_MODULES, lora_linears

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# checkpoint projection -> (our fused projection, its shard)
_TARGETS = {
    name: (fused, shard)
    for fused, names in LORA_MODULES.items()
    for shard, name in enumerate(names)
}
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<prefix>.+)\.(?P<module>\w+)\.lora_(?P<ab>[AB])\.weight$"
)


@dataclass(frozen=True, slots=True)
class AdapterConfig:
    rank: int
    alpha: float
    use_rslora: bool

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@dataclass(slots=True)
class LoRAAdapter:
    """An adapter on the host, ready to copy into a slot: per fused projection, ``a``
    ``[num_shards * max_rank, in]`` and ``b`` ``[out, max_rank]`` with the scaling folded in."""

    request: LoRARequest
    config: AdapterConfig
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_adapter_config(adapter_dir: Path, max_rank: int) -> AdapterConfig:
    path = adapter_dir / CONFIG_FILE
    if not path.is_file():
        raise LoRAAdapterError(f"{adapter_dir} has no {CONFIG_FILE}")
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoRAAdapterError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise LoRAAdapterError(f"{path} must hold a JSON object")
    if raw.get("peft_type", "LORA") != "LORA":
        raise LoRAAdapterError(f"only LoRA adapters are supported, got {raw.get('peft_type')}")
    unsupported = {
        "use_dora": bool(raw.get("use_dora")),
        "bias": raw.get("bias", "none") not in (None, "none"),
        "modules_to_save": bool(raw.get("modules_to_save")),
        "rank_pattern": bool(raw.get("rank_pattern")),
        "alpha_pattern": bool(raw.get("alpha_pattern")),
        "fan_in_fan_out": bool(raw.get("fan_in_fan_out")),
    }
    if any(unsupported.values()):
        names = [k for k, v in unsupported.items() if v]
        raise LoRAAdapterError(f"unsupported adapter settings: {', '.join(names)}")
    rank, alpha = raw.get("r"), raw.get("lora_alpha", raw.get("r"))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoRAAdapterError(f"{path}: r must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise LoRAAdapterError(f"{path}: lora_alpha must be a number, got {alpha!r}")
    if rank > max_rank:
        raise LoRAAdapterError(
            f"adapter rank {rank} is over this engine's max_lora_rank={max_rank}"
        )
    return AdapterConfig(rank=rank, alpha=float(alpha), use_rslora=bool(raw.get("use_rslora")))


def read_adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    path = adapter_dir / WEIGHTS_FILE
    if not path.is_file():
        raise LoRAAdapterError(f"{adapter_dir} has no {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types, and OSError
        raise LoRAAdapterError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_adapter(
    request: LoRARequest, adapter_dir: Path, model: nn.Module, max_rank: int, pin: bool
) -> LoRAAdapter:
    """Read and check the adapter at ``adapter_dir`` against ``model``'s projections; lay it
    out padded to ``max_rank`` in the model's dtype (in pinned memory when ``pin``)."""
    config = read_adapter_config(adapter_dir, max_rank)
    tensors = read_adapter_tensors(adapter_dir)
    linears = dict(lora_linears(model))
    pairs: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None or match["module"] not in _TARGETS:
            raise LoRAAdapterError(
                f"adapter tensor {key!r} is not a LoRA A/B of a q/k/v/o or gate/up/down projection"
            )
        fused, shard = _TARGETS[match["module"]]
        name = f"{match['prefix']}.{fused}"
        if name not in linears:
            raise LoRAAdapterError(
                f"adapter tensor {key!r} has no projection in this base model "
                "(an adapter for another base model?)"
            )
        pairs.setdefault((name, shard), {})[match["ab"]] = tensor
    if not pairs:
        raise LoRAAdapterError(f"{adapter_dir / WEIGHTS_FILE} holds no LoRA weights")
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for (name, shard), ab in sorted(pairs.items()):
        linear = linears[name]
        if "A" not in ab or "B" not in ab:
            raise LoRAAdapterError(f"{name} shard {shard}: lora_A or lora_B is missing")
        a, b = _padded(name, linear, weights, max_rank)
        _check_pair(name, shard, linear, ab["A"], ab["B"], config.rank)
        rows = linear.rows(shard)
        a[shard * max_rank : shard * max_rank + config.rank] = ab["A"].to(a.dtype)
        b[rows, : config.rank] = (ab["B"].double() * config.scaling).to(b.dtype)
    if pin:
        weights = {n: (a.pin_memory(), b.pin_memory()) for n, (a, b) in weights.items()}
    return LoRAAdapter(request, config, weights)


def _padded(
    name: str, linear: Linear, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in weights:
        out_features, in_features = linear.weight.shape
        dtype = linear.weight.dtype
        a = torch.zeros(len(linear.shard_sizes) * rank, in_features, dtype=dtype)
        weights[name] = (a, torch.zeros(out_features, rank, dtype=dtype))
    return weights[name]


def _check_pair(
    name: str, shard: int, linear: Linear, a: torch.Tensor, b: torch.Tensor, rank: int
) -> None:
    expected_a = (rank, linear.weight.shape[1])
    expected_b = (linear.shard_sizes[shard], rank)
    if tuple(a.shape) != expected_a or tuple(b.shape) != expected_b:
        raise LoRAAdapterError(
            f"{name} shard {shard}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not "
            f"fit this base model and rank {rank} (expected {expected_a} and {expected_b}); "
            "is the adapter for another base model?"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise LoRAAdapterError(f"{name} shard {shard}: LoRA weights must be floating point")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise LoRAAdapterError(f"{name} shard {shard}: LoRA weights hold NaN or infinity")


def local_adapter_dir(path: str, download_dir: Path) -> Path:
    """The adapter's local directory; an ``s3://bucket/prefix`` is downloaded once into
    ``download_dir`` (boto3, the service's own S3 settings from the environment)."""
    if not path.startswith("s3://"):
        local = Path(path).expanduser()
        if not local.is_dir():
            raise LoRAAdapterError(f"adapter path {path!r} is not a directory")
        return local
    bucket, _, prefix = path[len("s3://") :].partition("/")
    if not bucket:
        raise LoRAAdapterError(f"adapter path {path!r} names no bucket")
    target = download_dir / hashlib.sha256(path.encode()).hexdigest()[:16]
    if (target / CONFIG_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        return target
    import boto3  # the service's dependency; only adapters on S3 need it
    from botocore.exceptions import BotoCoreError, ClientError

    target.mkdir(parents=True, exist_ok=True)
    client = boto3.client("s3")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        key = f"{prefix.rstrip('/')}/{name}" if prefix else name
        partial = target / f"{name}.part"
        try:
            client.download_file(bucket, key, str(partial))
        except (BotoCoreError, ClientError) as exc:
            raise LoRAAdapterError(f"cannot download s3://{bucket}/{key}: {exc}") from exc
        partial.replace(target / name)
    return target
