"""Building a model from a Hugging Face safetensors directory.

The model is allocated empty on the target device in the target dtype, then each checkpoint
tensor is copied into its parameter (converting dtype on the way), or into its rows of a fused
parameter. Every parameter row must be written exactly once: a missing or unexpected tensor is
an error, not a silently random weight.

Random weights are only ever asked for by name (``load_format="dummy"``): they let a benchmark
run a model's exact shape from its ``config.json`` alone, with no checkpoint to copy around.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from engine.models.layers import Linear
from engine.models.llama import LlamaForCausalLM
from engine.models.model_config import ModelConfig, ModelConfigError

# Tensors some checkpoints carry that we recompute or do not use.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_model(
    model_dir: str | Path,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    max_position: int,
    random_seed: int | None = None,
) -> LlamaForCausalLM:
    """The model of ``config`` with the weights of ``model_dir`` (or, given ``random_seed``,
    random ones), ready for inference."""
    with torch.device(device), _default_dtype(dtype):
        model = LlamaForCausalLM(config, max_position)
    if random_seed is None:
        load_weights(model, Path(model_dir))
    else:
        init_random_weights(model, random_seed)
    return model.eval()


@torch.no_grad()
def init_random_weights(model: LlamaForCausalLM, seed: int, std: float = 0.02) -> None:
    """Weights as transformers initialises a fresh model: matrices and embeddings from
    N(0, std), norm scales 1, biases 0; the same seed gives the same model on a device."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            param.normal_(0.0, std, generator=generator)


def load_weights(model: LlamaForCausalLM, model_dir: Path) -> None:
    """Copy every checkpoint tensor into ``model``; raise if any parameter is left unwritten."""
    written: set[tuple[str, int]] = set()
    for name, tensor in checkpoint_tensors(model_dir):
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # some tied checkpoints store the embedding twice
        param_name, shard = _target(model, name)
        _copy(model, param_name, shard, tensor, name)
        written.add((param_name, shard))
    expected = {
        (name, shard)
        for name, param in model.named_parameters()
        for shard in range(_num_shards(model, name))
    }
    missing = sorted(expected - written)
    if missing:
        shown = ", ".join(f"{n}[{s}]" for n, s in missing[:5])
        raise ModelConfigError(
            f"{model_dir}: the checkpoint lacks {len(missing)} weights the model needs: {shown}"
        )


def checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of the directory's safetensors files, on the CPU."""
    for file in _safetensors_files(model_dir):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)


def _safetensors_files(model_dir: Path) -> list[Path]:
    """The shards named by ``model.safetensors.index.json``, else every ``*.safetensors``."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelConfigError(f"{model_dir} holds no *.safetensors weights")
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise ModelConfigError(f"safetensors shards listed in the index are missing: {absent}")
    return files


def _target(model: LlamaForCausalLM, name: str) -> tuple[str, int]:
    """Our parameter and shard for a checkpoint name: ``...self_attn.k_proj.bias`` ->
    ``(...self_attn.qkv_proj.bias, 1)``; unfused parameters are shard 0."""
    *modules, leaf = name.split(".")
    if modules and modules[-1] in model.PACKED_MODULES:
        fused, shard = model.PACKED_MODULES[modules[-1]]
        return ".".join([*modules[:-1], fused, leaf]), shard
    return name, 0


def _copy(
    model: LlamaForCausalLM, param_name: str, shard: int, tensor: torch.Tensor, source: str
) -> None:
    try:
        param = model.get_parameter(param_name)
    except AttributeError:
        raise ModelConfigError(
            f"checkpoint tensor {source!r} has no place in a {model.config.architecture} model"
        ) from None
    module = model.get_submodule(param_name.rsplit(".", 1)[0])
    target = param.data[module.rows(shard)] if isinstance(module, Linear) else param.data
    if target.shape != tensor.shape:
        raise ModelConfigError(
            f"checkpoint tensor {source!r} has shape {tuple(tensor.shape)}; the config implies "
            f"{tuple(target.shape)}"
        )
    target.copy_(tensor)


def _num_shards(model: LlamaForCausalLM, param_name: str) -> int:
    module = model.get_submodule(param_name.rsplit(".", 1)[0])
    return len(module.shard_sizes) if isinstance(module, Linear) else 1


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
