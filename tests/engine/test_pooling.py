"""The pooling runner against transformers' ``AutoModel`` with the same pooling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from engine.config import EngineConfig
from engine.llm import LLM
from engine.llm_engine import InvalidRequestError, LLMEngine
from engine.outputs import PoolingRequestOutput, RequestOutput
from engine.pooler import PoolingConfig, PoolingType
from engine.pooling_params import PoolingParams
from engine.sampling_params import SamplingParams
from infra.harness.tiny_models import model_variant


def _token_lists(seed: int, lengths: list[int], vocab: int = 512) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


@torch.inference_mode()
def hf_embed(
    model_dir: Path, prompt: list[int], kind: str = "last", normalize: bool = True
) -> torch.Tensor:
    """transformers' base model on one prompt alone, pooled as ``kind`` says."""
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    hidden = model(torch.tensor([prompt])).last_hidden_state[0]
    pooled = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[kind]
    return F.normalize(pooled, dim=0) if normalize else pooled


def _cosines(outputs: list[PoolingRequestOutput], refs: list[torch.Tensor]) -> list[float]:
    return [
        float(F.cosine_similarity(torch.tensor(o.outputs.embedding), r, dim=0))
        for o, r in zip(outputs, refs, strict=True)
    ]


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
def test_tiny_models_match_transformers(
    tiny_model_dirs: dict[str, Path], kind: str, pooling: str
) -> None:
    model_dir = tiny_model_dirs[kind]
    prompts = _token_lists(1, [1, 7, 33, 120])
    llm = LLM(str(model_dir), runner="pooling", pooling_type=pooling, num_kv_blocks=64)
    outputs = llm.embed(prompts, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == prompts
    assert all(len(o.outputs.embedding) == 64 for o in outputs)
    refs = [hf_embed(model_dir, p, pooling) for p in prompts]
    assert min(_cosines(outputs, refs)) >= 0.9999
    norms = [float(torch.tensor(o.outputs.embedding).norm()) for o in outputs]
    assert norms == pytest.approx([1.0] * len(prompts), abs=1e-5)


def test_smollm2_matches_transformers(smollm2_dir: Path) -> None:
    llm = LLM(str(smollm2_dir), runner="pooling", num_kv_blocks=64)
    texts = ["The capital of France is Paris.", "hello", "Embeddings " * 40]
    outputs = llm.embed(texts, use_tqdm=False)
    tokenizer = llm.get_tokenizer()
    refs = [hf_embed(smollm2_dir, tokenizer.encode(t)) for t in texts]
    assert [o.prompt for o in outputs] == texts
    assert min(_cosines(outputs, refs)) >= 0.9999


def test_chunked_mixed_batch_equals_each_alone(tiny_model_dirs: dict[str, Path]) -> None:
    """A 32-token budget splits the long prompts over many steps beside the short ones."""
    model_dir = tiny_model_dirs["qwen3"]
    prompts = _token_lists(2, [3, 300, 17, 90, 1, 250, 40])
    batched = LLM(str(model_dir), runner="pooling", num_kv_blocks=64, max_num_batched_tokens=32)
    together = batched.embed(prompts, use_tqdm=False)
    assert batched.engine.stats.num_steps > sum(len(p) for p in prompts) // 32
    alone = LLM(str(model_dir), runner="pooling", num_kv_blocks=64)
    for prompt, output in zip(prompts, together, strict=True):
        single = alone.embed([prompt], use_tqdm=False)[0]
        assert output.outputs.embedding == pytest.approx(single.outputs.embedding, abs=1e-5)


def test_blocks_free_after_last_chunk_and_generation_shares_steps(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """One engine runs generation and embedding requests in the same steps; an embedding's
    KV blocks are back in the pool the step its last chunk ran."""
    model_dir = tiny_model_dirs["llama"]
    engine = LLMEngine(
        EngineConfig(model=str(model_dir), num_kv_blocks=64, enable_prefix_caching=False)
    )
    gen_prompt, emb_prompt = _token_lists(3, [20, 40])
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    engine.add_request("gen", gen_prompt, greedy)
    engine.add_request("emb", emb_prompt, PoolingParams())
    first = engine.step()
    assert [o.request_id for o in first] == ["emb"]
    assert engine.scheduler.kv_cache.num_used_blocks == 2  # the generation's 21 slots only
    outputs: list[RequestOutput] = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if isinstance(o, RequestOutput)]
    assert engine.scheduler.kv_cache.num_used_blocks == 0
    alone = LLM(str(model_dir), num_kv_blocks=64).generate([gen_prompt], greedy, use_tqdm=False)
    assert outputs[0].outputs[0].token_ids == alone[0].outputs[0].token_ids
    assert isinstance(first[0], PoolingRequestOutput)
    ref = hf_embed(model_dir, emb_prompt)
    assert (
        float(F.cosine_similarity(torch.tensor(first[0].outputs.embedding), ref, dim=0)) >= 0.9999
    )


def test_sentence_transformers_files_choose_pooling(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model_dir = model_variant(tiny_model_dirs["qwen3"], tmp_path / "st")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (model_dir / "modules.json").write_text(json.dumps(modules))
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    )
    assert PoolingConfig.from_model_dir(model_dir) == PoolingConfig(PoolingType.MEAN, True, None)
    prompts = _token_lists(4, [5, 50])
    outputs = LLM(str(model_dir), runner="pooling", num_kv_blocks=64).embed(prompts, use_tqdm=False)
    refs = [hf_embed(model_dir, p, "mean") for p in prompts]
    assert min(_cosines(outputs, refs)) >= 0.9999
    # Without the Normalize module the vector is the raw mean.
    (model_dir / "modules.json").write_text(json.dumps(modules[:2]))
    raw = LLM(str(model_dir), runner="pooling", num_kv_blocks=64).embed(prompts[:1], use_tqdm=False)
    ref = hf_embed(model_dir, prompts[0], "mean", normalize=False)
    assert raw[0].outputs.embedding == pytest.approx(ref.tolist(), abs=1e-4)


def test_dimensions_need_matryoshka(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    prompt = _token_lists(5, [30])
    plain = LLM(str(tiny_model_dirs["llama"]), runner="pooling", num_kv_blocks=64)
    with pytest.raises(InvalidRequestError, match="matryoshka"):
        plain.embed(prompt, PoolingParams(dimensions=16), use_tqdm=False)
    model_dir = model_variant(tiny_model_dirs["llama"], tmp_path / "mrl", is_matryoshka=True)
    llm = LLM(str(model_dir), runner="pooling", num_kv_blocks=64)
    full = torch.tensor(llm.embed(prompt, use_tqdm=False)[0].outputs.embedding)
    short = llm.embed(prompt, PoolingParams(dimensions=16), use_tqdm=False)[0].outputs.embedding
    assert short == pytest.approx(F.normalize(full[:16], dim=0).tolist(), abs=1e-6)
    with pytest.raises(InvalidRequestError, match="at most 64"):
        llm.embed(prompt, PoolingParams(dimensions=65), use_tqdm=False)


def test_input_over_context_is_refused(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), runner="pooling", num_kv_blocks=128)
    with pytest.raises(InvalidRequestError, match="context length of 1024"):
        llm.embed(_token_lists(6, [1025]), use_tqdm=False)
    assert len(llm.embed(_token_lists(6, [1024]), use_tqdm=False)[0].outputs.embedding) == 64
    with pytest.raises(ValueError, match="runner='pooling'"):
        llm.generate([[5, 6]], use_tqdm=False)
