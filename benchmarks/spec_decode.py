"""Speculative decoding against plain decoding, same model, same prompts, same run.

Two workloads, each arm on its own engine, the arms alternating in rounds (the machine is
shared and noisy) and every arm's prefix cache reset before it runs:

- ``extraction``: documents of 200-600 tokens (the extraction corpus' documents strung
  together) and an instruction to quote their facts word for word, greedy. Plain decoding
  against n-gram (prompt lookup) speculation at batch 1, 8 and 64. Targets: output tokens/s
  ratio >= 1.8 at batch 1 and 8, >= 0.97 at batch 64. The speculative outputs must equal the
  plain ones token for token (checked).
- ``chat``: short chat questions at batch 1 and 8, plain against a draft model: the target
  itself as its own draft (every draft right: the ceiling of acceptance, at the cost of a
  second model as large as the target) and a tiny random-weight model with the target's
  tokenizer (no draft right: the overhead floor). SmolLM2-135M has no smaller sibling with
  its tokenizer, so these bound draft-model speculation here rather than show a win.

Tokens/s counts output tokens over the wall time of the whole ``generate`` call (prefill
included). Batch 1 runs its prompts one ``generate`` call at a time. The process's CPU time
is recorded beside it (``cpu_ratio_per_round``: output tokens per CPU second, spec over
plain), which a neighbour's load disturbs far less than wall time on a shared machine.

Two ceilings beside each extraction ratio bound what any setting could reach on this
machine and model:

- ``ceiling_any_speculation``: the plain arm's median seconds over its prefill alone (the
  same prompts and batches with ``max_tokens=1``, timed after the rounds). Speculation only
  shortens decoding, so no proposer, however good, beats this ratio;
- ``ngram_replay``: the plain arm's greedy outputs (which the speculative ones equal)
  replayed through the n-gram proposer for a few settings: tokens per target forward pass,
  and the ratio that would give if a pass verifying k + 1 tokens cost no more than a decode
  step (it costs more, so this too is an upper bound).

    python -m benchmarks.spec_decode --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from engine import LLM, SamplingParams
from engine.model_fetch import fetch_model
from engine.ngram_proposer import NgramProposer
from engine.tokenizer import Tokenizer
from infra.harness.extraction_corpus import DOCUMENTS
from infra.harness.tiny_models import build_tiny_chat_model

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
# The n-gram settings the worker's KVBATCH_ENGINE_SPECULATIVE_CONFIG documents.
NGRAM: dict[str, Any] = {
    "method": "ngram",
    "num_speculative_tokens": 4,
    "prompt_lookup_max": 4,
    "prompt_lookup_min": 2,
    "disable_by_batch_size": 32,
}
INSTRUCTION = (
    "Quote, word for word, every sentence of the document above that gives a price, a "
    "total, an age or a number of years. One sentence per line."
)


def extraction_prompts(tokenizer: Tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    """Chat prompts over documents of 200-600 tokens, strung from the corpus' documents."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        target = rng.randint(200, 600)
        sentences: list[str] = []
        while len(tokenizer.encode(" ".join(sentences), add_special_tokens=False)) < target:
            sentences.append(rng.choice(DOCUMENTS).text)
        document = " ".join(sentences)
        messages = [{"role": "user", "content": f"{document}\n\n{INSTRUCTION}"}]
        prompts.append(tokenizer.apply_chat_template(messages))
    return prompts


def chat_prompts(tokenizer: Tokenizer, count: int) -> list[list[int]]:
    topics = ["tides", "bread", "rainbows", "volcanoes", "bees", "glass", "clocks", "maps"]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Explain in three sentences how {topic} work."}]
        )
        for topic in (topics[i % len(topics)] for i in range(count))
    ]


def run_arm(llm: LLM, prompts: list[list[int]], batch: int, max_tokens: int) -> dict[str, Any]:
    """Output tokens/s of ``prompts`` in ``generate`` calls of ``batch`` prompts."""
    llm.engine.reset_prefix_cache()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    stats = llm.engine.stats
    drafts, accepted, verifications = (
        stats.num_draft_tokens,
        stats.num_accepted_tokens,
        stats.num_spec_verifications,
    )
    outputs: list[list[int]] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        done = llm.generate(prompts[i : i + batch], params, use_tqdm=False)
        outputs += [o.outputs[0].token_ids for o in done]
    elapsed = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    num_tokens = sum(len(o) for o in outputs)
    num_drafts = stats.num_draft_tokens - drafts
    num_accepted = stats.num_accepted_tokens - accepted
    num_verifications = stats.num_spec_verifications - verifications
    return {
        "seconds": elapsed,
        "output_tokens": num_tokens,
        "tokens_per_s": num_tokens / elapsed,
        "cpu_seconds": cpu_s,
        "tokens_per_cpu_s": num_tokens / cpu_s,
        "num_draft_tokens": num_drafts,
        "num_accepted_tokens": num_accepted,
        "acceptance_rate": num_accepted / num_drafts if num_drafts else 0.0,
        "mean_accepted_length": (
            1 + num_accepted / num_verifications if num_verifications else 0.0
        ),
        "outputs": outputs,
    }


# (num_speculative_tokens, prompt_lookup_min, prompt_lookup_max) replayed beside NGRAM's own.
REPLAY_SETTINGS = ((4, 2, 4), (4, 1, 4), (8, 1, 4), (8, 2, 8), (12, 1, 8))


def prefill_seconds(llm: LLM, prompts: list[list[int]], batch: int) -> float:
    """Wall time of ``prompts`` in ``generate`` calls of ``batch`` with one output token each:
    the run's prefill, which no speculation shortens."""
    llm.engine.reset_prefix_cache()
    params = SamplingParams(temperature=0.0, max_tokens=1)
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        llm.generate(prompts[i : i + batch], params, use_tqdm=False)
    return time.perf_counter() - start


def ngram_tokens_per_forward(
    prompts: list[list[int]], outputs: list[list[int]], k: int, min_n: int, max_n: int
) -> float:
    """Output tokens per target forward pass if each request decoded ``outputs`` (its greedy
    tokens) with prompt lookup: each pass keeps the drafts that agree, plus one token."""
    proposer = NgramProposer(min_n, max_n)
    tokens = passes = 0
    for prompt, output in zip(prompts, outputs, strict=True):
        i = 0
        while i < len(output):
            draft = proposer.propose(prompt + output[:i], min(k, len(output) - i - 1))
            agreed = 0
            while agreed < len(draft) and draft[agreed] == output[i + agreed]:
                agreed += 1
            i += agreed + 1
            tokens += agreed + 1
            passes += 1
    return tokens / passes


def ceilings(
    plain: LLM, prompts: list[list[int]], batch: int, whole: float, outputs: list[list[int]]
) -> dict[str, Any]:
    """The two upper bounds of the module docstring, for one batch size; ``whole``: the plain
    arm's seconds, ``outputs``: its tokens."""
    prefill = prefill_seconds(plain, prompts, batch)
    decode = max(whole - prefill, 0.0)
    replay = {}
    for k, min_n, max_n in REPLAY_SETTINGS:
        per_pass = ngram_tokens_per_forward(prompts, outputs, k, min_n, max_n)
        replay[f"k{k}_n{min_n}-{max_n}"] = {
            "tokens_per_forward": round(per_pass, 3),
            "ratio_if_verify_cost_a_decode_step": round(whole / (prefill + decode / per_pass), 3),
        }
    return {
        "plain_seconds": round(whole, 3),
        "prefill_seconds": round(prefill, 3),
        "prefill_share": round(prefill / whole, 3),
        "ceiling_any_speculation": round(whole / prefill, 3),
        "ngram_replay": replay,
    }


def compare(
    arms: dict[str, LLM],
    prompts_for: dict[int, list[list[int]]],
    max_tokens: int,
    rounds: int,
    exact: bool,
    ceiling_arm: str | None = None,
) -> dict[str, Any]:
    """Every arm at every batch size, arms alternating (and their order flipping) per round;
    ratios are each speculative arm's median tokens/s over the plain arm's."""
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {
        b: {name: [] for name in arms} for b in prompts_for
    }
    for r in range(rounds):
        for batch, prompts in prompts_for.items():
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for name in order:
                run = run_arm(arms[name], prompts, batch, max_tokens)
                runs[batch][name].append(run)
                print(f"round {r} batch {batch:>3} {name:>12}: {run['tokens_per_s']:7.1f} tok/s")
    result: dict[str, Any] = {}
    for batch, by_arm in runs.items():
        plain = by_arm["plain"]
        row: dict[str, Any] = {"prompts": len(prompts_for[batch])}
        base = statistics.median(run["tokens_per_s"] for run in plain)
        row["plain_tokens_per_s"] = [round(run["tokens_per_s"], 2) for run in plain]
        for name, spec_runs in by_arm.items():
            if name == "plain":
                continue
            if exact:
                for run, ref in zip(spec_runs, plain, strict=True):
                    assert run["outputs"] == ref["outputs"], f"{name} differs at batch {batch}"
            median = statistics.median(run["tokens_per_s"] for run in spec_runs)
            row[name] = {
                "tokens_per_s": [round(run["tokens_per_s"], 2) for run in spec_runs],
                "ratio_median": round(median / base, 3),
                "ratio_per_round": [
                    round(s["tokens_per_s"] / p["tokens_per_s"], 3)
                    for s, p in zip(spec_runs, plain, strict=True)
                ],
                "cpu_ratio_per_round": [
                    round(s["tokens_per_cpu_s"] / p["tokens_per_cpu_s"], 3)
                    for s, p in zip(spec_runs, plain, strict=True)
                ],
                "acceptance_rate": round(spec_runs[-1]["acceptance_rate"], 3),
                "mean_accepted_length": round(spec_runs[-1]["mean_accepted_length"], 3),
                "output_tokens": spec_runs[-1]["output_tokens"],
            }
        if ceiling_arm is not None:
            whole = statistics.median(run["seconds"] for run in plain)
            row["ceilings"] = ceilings(
                arms[ceiling_arm], prompts_for[batch], batch, whole, plain[-1]["outputs"]
            )
        result[f"batch_{batch}"] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-1-prompts", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--chat-max-tokens", type=int, default=64)
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--name", default="spec_decode_cpu")
    args = parser.parse_args()

    model = fetch_model("smollm2-135m-instruct", MODELS_DIR)
    tokenizer = Tokenizer.from_pretrained(str(model))
    common: dict[str, Any] = dict(dtype="float32", max_num_batched_tokens=4096)
    result: dict[str, Any] = {"model": "smollm2-135m-instruct (fp32)"}
    if not args.skip_extraction:
        pool = extraction_prompts(tokenizer, max(args.batches))
        prompts_for = {b: pool[: args.batch_1_prompts if b == 1 else b] for b in args.batches}
        result["extraction"] = compare(
            {
                "plain": LLM(str(model), **common),
                "ngram": LLM(str(model), speculative_config=NGRAM, **common),
            },
            prompts_for,
            args.max_tokens,
            args.rounds,
            exact=True,
            ceiling_arm="plain",
        )
        result.update(ngram_config=NGRAM, max_tokens=args.max_tokens, document_tokens="200-600")
    if not args.skip_chat:
        tiny = build_tiny_chat_model(MODELS_DIR / "tiny-random-smollm2-tokenizer", model)
        chat = compare(
            {
                "plain": LLM(str(model), **common),
                "draft_self": LLM(
                    str(model),
                    speculative_config={"model": str(model), "num_speculative_tokens": 4},
                    **common,
                ),
                "draft_tiny_random": LLM(
                    str(model),
                    speculative_config={"model": str(tiny), "num_speculative_tokens": 4},
                    **common,
                ),
            },
            {b: chat_prompts(tokenizer, args.batch_1_prompts if b == 1 else b) for b in (1, 8)},
            args.chat_max_tokens,
            args.rounds,
            exact=True,
        )
        result.update(chat_draft_model=chat, chat_max_tokens=args.chat_max_tokens)
    print(write_result(args.name, result))


if __name__ == "__main__":
    main()
