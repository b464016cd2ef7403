"""Model config normalisation, safetensors loading (fusion, shards, errors) and step inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.models.inputs import InputBuffers
from engine.models.llama import LlamaForCausalLM
from engine.models.loader import load_model
from engine.models.model_config import ModelConfig, ModelConfigError
from engine.request import Request, RequestId
from engine.sampling_params import SamplingParams
from engine.scheduler_output import ScheduledRequest

CPU = torch.device("cpu")


def raw_config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        architectures=["LlamaForCausalLM"],
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=2,
    )
    return base | overrides


def copy_model(src: Path, dst: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A copy of the model directory ``src``, its weights replaced by ``tensors`` if given."""
    shutil.copytree(src, dst)
    if tensors is not None:
        save_file(tensors, dst / "model.safetensors")
    return dst


# --- ModelConfig ---------------------------------------------------------------------------


def test_rope_parameters_and_legacy_rope_keys_normalise_alike() -> None:
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    scaling |= {"original_max_position_embeddings": 8192}
    new = ModelConfig.from_dict(
        raw_config(rope_parameters={"rope_theta": 500000.0, "rope_type": "llama3", **scaling})
    )
    old = ModelConfig.from_dict(
        raw_config(rope_theta=500000.0, rope_scaling={"type": "llama3", **scaling})
    )
    assert new == old
    assert new.rope_theta == 500000.0
    assert new.rope_scaling == {"rope_type": "llama3", **scaling}
    plain = ModelConfig.from_dict(
        raw_config(rope_parameters={"rope_theta": 1e6, "rope_type": "default"})
    )
    assert (plain.rope_theta, plain.rope_scaling) == (1e6, None)
    assert ModelConfig.from_dict(raw_config()).rope_theta == 10000.0


def test_shape_defaults_and_eos_sources() -> None:
    config = ModelConfig.from_dict(
        raw_config(num_key_value_heads=None, eos_token_id=[7, 2]), {"eos_token_id": [2, 9]}
    )
    assert config.head_dim == 64 // 8
    assert config.num_kv_heads == 8
    assert config.eos_token_ids == [2, 9, 7]
    assert config.tie_word_embeddings is False
    assert ModelConfig.from_dict(raw_config(head_dim=128)).head_dim == 128
    assert ModelConfig.from_dict(raw_config(eos_token_id=None)).eos_token_ids == []


def test_family_flags() -> None:
    qwen2 = ModelConfig.from_dict(raw_config(architectures=["Qwen2ForCausalLM"]))
    assert (qwen2.qkv_bias, qwen2.o_proj_bias, qwen2.qk_norm) == (True, False, False)
    qwen3 = ModelConfig.from_dict(raw_config(architectures=["Qwen3ForCausalLM"]))
    assert (qwen3.qkv_bias, qwen3.o_proj_bias, qwen3.qk_norm) == (False, False, True)
    biased = ModelConfig.from_dict(raw_config(attention_bias=True, mlp_bias=True))
    assert (biased.qkv_bias, biased.o_proj_bias, biased.mlp_bias) == (True, True, True)


def test_sliding_window_caps_the_context_only_when_in_use() -> None:
    mistral = raw_config(architectures=["MistralForCausalLM"], sliding_window=512)
    assert ModelConfig.from_dict(mistral).max_position_embeddings == 512
    qwen2 = raw_config(
        architectures=["Qwen2ForCausalLM"], sliding_window=512, use_sliding_window=False
    )
    assert ModelConfig.from_dict(qwen2).max_position_embeddings == 2048


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(architectures=["GPT2LMHeadModel"]), "unsupported model architecture"),
        (dict(architectures=None), "none given"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(num_key_value_heads=3), "not a multiple"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn' is not supported"),
        (dict(vocab_size=None), "'vocab_size'"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        ModelConfig.from_dict(raw_config(**overrides))


def test_directory_without_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"no config\.json"):
        ModelConfig.from_pretrained(tmp_path)


# --- loading -------------------------------------------------------------------------------


def load(model_dir: Path, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    return load_model(model_dir, ModelConfig.from_pretrained(model_dir), CPU, dtype, 64)


def test_fused_projections_hold_the_checkpoint_matrices(tiny_model_dirs: dict[str, Path]) -> None:
    model_dir = tiny_model_dirs["qwen2"]
    weights = load_file(model_dir / "model.safetensors")
    model = load(model_dir)
    params = dict(model.named_parameters())
    layer = "model.layers.1"
    for leaf in ("weight", "bias"):
        stacked = [weights[f"{layer}.self_attn.{p}_proj.{leaf}"] for p in "qkv"]
        assert torch.equal(params[f"{layer}.self_attn.qkv_proj.{leaf}"], torch.cat(stacked))
    gate, up = (weights[f"{layer}.mlp.{p}_proj.weight"] for p in ("gate", "up"))
    assert torch.equal(params[f"{layer}.mlp.gate_up_proj.weight"], torch.cat([gate, up]))
    assert model.lm_head is None  # tied


def test_loading_converts_to_the_target_dtype(tiny_model_dirs: dict[str, Path]) -> None:
    model = load(tiny_model_dirs["qwen3"], torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.cos_sin_cache.dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32


def test_sharded_checkpoint_loads_like_a_single_file(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    src = tiny_model_dirs["llama"]
    weights = load_file(src / "model.safetensors")
    sharded = copy_model(src, tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    names = sorted(weights)
    weight_map: dict[str, str] = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: weights[n] for n in part}, sharded / file)
        weight_map |= dict.fromkeys(part, file)
    index = {"metadata": {}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))

    expected = dict(load(src).named_parameters())
    got = dict(load(sharded).named_parameters())
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[n], got[n]) for n in expected)


def test_missing_extra_and_misshapen_tensors_are_errors(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    src = tiny_model_dirs["llama"]
    weights = load_file(src / "model.safetensors")
    cases = {
        "missing": (
            {k: v for k, v in weights.items() if "layers.1.self_attn.v_proj" not in k},
            r"lacks 1 weights.*layers\.1\.self_attn\.qkv_proj\.weight\[2\]",
        ),
        "extra": (
            weights | {"model.layers.0.self_attn.rogue.weight": torch.zeros(2)},
            "'model.layers.0.self_attn.rogue.weight' has no place",
        ),
        "shape": (weights | {"model.norm.weight": torch.zeros(65)}, r"shape \(65,\)"),
    }
    for name, (tensors, message) in cases.items():
        with pytest.raises(ModelConfigError, match=message):
            load(copy_model(src, tmp_path / name, tensors))


def test_tied_checkpoint_may_still_store_lm_head(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    weights = load_file(tiny_model_dirs["qwen3"] / "model.safetensors")
    extra = {"lm_head.weight": weights["model.embed_tokens.weight"].clone()}
    model_dir = copy_model(tiny_model_dirs["qwen3"], tmp_path / "tied", weights | extra)
    assert load(model_dir).lm_head is None


# --- step inputs ---------------------------------------------------------------------------


def scheduled(tokens: list[int], start: int, blocks: list[int], sample: bool) -> ScheduledRequest:
    request = Request(RequestId("r"), tokens, SamplingParams())
    return ScheduledRequest(request, tokens, start, blocks, sample)


def test_step_inputs_index_arithmetic() -> None:
    """block_size 4; A: 3-token chunk at position 5 (blocks 7, 2); B: one decode at position 4
    (blocks 0, 9, 5; the table is wider than needed); C: 2-token prefill, not sampled."""
    step = [
        scheduled([10, 11, 12], 5, [7, 2], sample=True),
        scheduled([13], 4, [0, 9, 5], sample=True),
        scheduled([14, 15], 0, [3], sample=False),
    ]
    inputs = InputBuffers(6, 3, 3, block_size=4, device=CPU).build(step)
    assert inputs.input_ids.tolist() == [10, 11, 12, 13, 14, 15]
    assert inputs.positions.tolist() == [5, 6, 7, 4, 0, 1]
    # A: 2*4+1, 2*4+2, 2*4+3; B: 9*4+0; C: 3*4+0, 3*4+1
    assert inputs.attn.slot_mapping.tolist() == [9, 10, 11, 36, 12, 13]
    assert inputs.attn.slot_mapping.dtype == torch.int64
    assert inputs.attn.block_table.tolist() == [[7, 2, 0], [0, 9, 5], [3, 0, 0]]
    assert inputs.attn.block_table.dtype == torch.int32
    assert inputs.attn.query_start_loc.tolist() == [0, 3, 4, 6]
    assert inputs.attn.seq_lens.tolist() == [8, 5, 2]
    assert (inputs.attn.max_query_len, inputs.attn.max_seq_len) == (3, 8)
    assert inputs.logits_indices.tolist() == [2, 3]


# --- random weights (load_format="dummy") -------------------------------------------------


def test_dummy_weights_need_only_config_json_and_follow_the_seed(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The benchmarks build big shapes from a config alone; the weights are N(0, 0.02)
    matrices, unit norm scales and zero biases, the same for the same seed."""
    from engine import LLM, SamplingParams

    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(tiny_model_dirs["qwen2"] / "config.json", config_only / "config.json")
    with pytest.raises(ModelConfigError, match=r"no \*\.safetensors"):
        LLM(str(config_only), device="cpu", num_kv_blocks=32)

    def run(seed: int) -> tuple[list[int], dict[str, torch.nn.Parameter]]:
        llm = LLM(str(config_only), device="cpu", num_kv_blocks=32, load_format="dummy", seed=seed)
        out = llm.generate([[5, 6, 7, 8]], SamplingParams(max_tokens=6), use_tqdm=False)
        params = dict(llm.engine.runner.model.named_parameters())
        return out[0].outputs[0].token_ids, params

    tokens, params = run(seed=1)
    again, params_again = run(seed=1)
    _, params_other = run(seed=2)
    assert tokens == again and len(tokens) == 6
    for name, value in params.items():
        assert torch.equal(value, params_again[name]), name
    qkv = params["model.layers.0.self_attn.qkv_proj.weight"]
    assert not torch.equal(qkv, params_other["model.layers.0.self_attn.qkv_proj.weight"])
    assert abs(float(qkv.std()) - 0.02) < 0.002
    assert torch.equal(params["model.norm.weight"], torch.ones_like(params["model.norm.weight"]))
    bias = params["model.layers.0.self_attn.qkv_proj.bias"]
    assert torch.equal(bias, torch.zeros_like(bias))
