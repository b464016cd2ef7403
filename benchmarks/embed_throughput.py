"""Embedding throughput: the engine's pooling runner vs transformers batched, same run.

``--num-texts`` texts (default 1,000) of 16..512 tokens cut from a corpus, embedded by
SmolLM2-135M-Instruct with last-token pooling, L2-normalized. transformers runs the base
model (``AutoModel``) in batches of ``--batch-size``, right-padded, pooling each text's
last real token, in two orders: as given (what a plain batched loop does) and sorted by
length (what sentence-transformers' ``encode`` does to cut padding). The engine gets the
same token ids through ``LLM(runner="pooling").embed``: no padding, chunked prefill under
its token budget. Throughput is input tokens/s (real tokens, not padding); the result, with
the ratio and the worst cosine between the engine's and transformers' vectors, goes to
``benchmarks/results/embed_throughput_<device>.json``. With ``--rounds`` the three arms
alternate that many times on the same texts and each rate is over the summed times.

    python -m benchmarks.embed_throughput [--num-texts 1000] [--batch-size 32] [--rounds 1]
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel

from benchmarks.common import parse_options, write_result
from engine import LLM
from engine.model_fetch import fetch_model
from engine.tokenizer import Tokenizer
from infra.harness.workloads import CORPUS


def make_texts(tokenizer: Tokenizer, num_texts: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    corpus_ids = tokenizer.encode(CORPUS * 4, add_special_tokens=False)
    lengths = torch.randint(16, 513, (num_texts,), generator=gen).tolist()
    starts = torch.randint(0, len(corpus_ids) - 512, (num_texts,), generator=gen).tolist()
    return [corpus_ids[s : s + n] for s, n in zip(starts, lengths, strict=True)]


@torch.inference_mode()
def run_transformers(
    model: Any, texts: list[list[int]], batch_size: int, sort: bool, device: str
) -> tuple[float, torch.Tensor]:
    """Seconds and the ``[num_texts, hidden]`` vectors, in input order."""
    order = (
        sorted(range(len(texts)), key=lambda i: len(texts[i])) if sort else list(range(len(texts)))
    )
    vectors = torch.empty(len(texts), model.config.hidden_size)
    start = time.perf_counter()
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        width = max(len(texts[i]) for i in chunk)
        ids = torch.tensor([texts[i] + [0] * (width - len(texts[i])) for i in chunk], device=device)
        mask = torch.tensor(
            [[1] * len(texts[i]) + [0] * (width - len(texts[i])) for i in chunk], device=device
        )
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(dim=1) - 1
        pooled = hidden[torch.arange(len(chunk), device=device), last]
        vectors[chunk] = F.normalize(pooled.float(), dim=-1).cpu()
    return time.perf_counter() - start, vectors


def run_engine(llm: LLM, texts: list[list[int]]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    outputs = llm.embed(texts, use_tqdm=False)
    seconds = time.perf_counter() - start
    return seconds, torch.tensor([o.outputs.embedding for o in outputs])


def main() -> None:
    args = parse_options(
        __doc__,
        num_texts=1000,
        batch_size=32,
        max_num_batched_tokens=2048,
        rounds=1,
        seed=0,
        device="cpu",
    )

    model_dir = fetch_model("smollm2-135m-instruct")
    tokenizer = Tokenizer.from_pretrained(str(model_dir))
    texts = make_texts(tokenizer, args.num_texts, args.seed)
    num_tokens = sum(len(t) for t in texts)

    llm = LLM(
        str(model_dir),
        runner="pooling",
        dtype="float32",
        device=args.device,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    llm.embed(texts[:2], use_tqdm=False)  # warm-up
    model: Any = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(args.device).eval()
    run_transformers(model, texts[:2], 2, False, args.device)  # warm-up
    # The arms alternate round by round, so the shared machine's drift hits each alike.
    times: dict[str, list[float]] = {"engine": [], "plain": [], "sorted": []}
    for _ in range(args.rounds):
        engine_s, engine_vecs = run_engine(llm, texts)
        plain_s, plain_vecs = run_transformers(model, texts, args.batch_size, False, args.device)
        sorted_s, sorted_vecs = run_transformers(model, texts, args.batch_size, True, args.device)
        for name, seconds in [("engine", engine_s), ("plain", plain_s), ("sorted", sorted_s)]:
            times[name].append(seconds)
    stats = llm.engine.stats.as_dict()
    cosine = min(
        float(F.cosine_similarity(engine_vecs, reference, dim=-1).min())
        for reference in (plain_vecs, sorted_vecs)
    )
    rates = {name: num_tokens * args.rounds / sum(t) for name, t in times.items()}
    engine_s, plain_s, sorted_s = (sum(times[n]) for n in ("engine", "plain", "sorted"))
    result = {
        "workload": {
            "model": "SmolLM2-135M-Instruct (fp32), last-token pooling, L2-normalized",
            "num_texts": len(texts),
            "input_tokens": num_tokens,
            "text_len_range": [min(map(len, texts)), max(map(len, texts))],
            "transformers_batch_size": args.batch_size,
            "engine_max_num_batched_tokens": args.max_num_batched_tokens,
            "rounds": args.rounds,
        },
        "seconds_per_round": times,
        "engine": {"seconds": engine_s, "input_tokens_per_s": rates["engine"]},
        "transformers_batched": {"seconds": plain_s, "input_tokens_per_s": rates["plain"]},
        "transformers_length_sorted": {"seconds": sorted_s, "input_tokens_per_s": rates["sorted"]},
        "ratio_engine_over_transformers_batched": rates["engine"] / rates["plain"],
        "ratio_engine_over_transformers_length_sorted": rates["engine"] / rates["sorted"],
        "min_cosine_engine_vs_transformers": cosine,
        "target_ratio": 2.0,
        "engine_stats": stats,
    }
    path = write_result(f"embed_throughput_{args.device}", result)
    print(
        f"engine {rates['engine']:.0f} tok/s | transformers batched {rates['plain']:.0f} tok/s "
        f"({rates['engine'] / rates['plain']:.2f}x) | length-sorted {rates['sorted']:.0f} tok/s "
        f"({rates['engine'] / rates['sorted']:.2f}x) | min cosine {cosine:.6f} -> {path}"
    )


if __name__ == "__main__":
    main()
