"""Step time of schema-constrained decoding vs unconstrained, same batch, same run.

Both arms decode the same ``--batch`` extraction prompts for ``--max-tokens`` steps with
``ignore_eos`` (so the batch stays full); the constrained arm gives every request the invoice
schema of the test corpus. The arms alternate over ``--rounds`` rounds; the first constrained
round pays the one grammar compile, later ones hit the cache. Only full decode steps (every
request sampled, one token each) are timed, each split into the engine's step phases: the
forward pass is the same work in both arms, so ``overhead_outside_forward`` (the arms'
difference in every other phase, over the unconstrained step time) is the grammar's cost
without the drift of a shared machine's forward times. Target: constrained step time <= 1.10x.

``--compare-engines`` also measures xgrammar and llguidance on the same token sequences
(grammar compile time, and mask time per token), which is how the engine was chosen.

    python -m benchmarks.structured_outputs --batch 64 --max-tokens 48 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import fields
from typing import Any, cast

import torch

from benchmarks.common import write_result
from engine import LLMEngine, SamplingParams, StructuredOutputsParams
from engine.config import EngineConfig
from engine.outputs import RequestOutput
from engine.stats import StepTimes
from infra.harness.extraction_corpus import DOCUMENTS, SCHEMAS, extraction_messages


def _run_arm(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> dict[str, Any]:
    engine.reset_prefix_cache()
    for i, prompt in enumerate(prompts):
        engine.add_request(i, prompt, params)
    decode_s: list[float] = []
    phases = StepTimes()  # of the timed decode steps, summed
    outputs = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        outputs += engine.step()
        elapsed = time.perf_counter() - start
        step = engine.stats.last_step
        full = step is not None and step.num_sampled == len(prompts)
        if full and step is not None and step.num_batched_tokens == len(prompts):
            decode_s.append(elapsed)
            phases.add(step.times)
    generated = [o for o in outputs if isinstance(o, RequestOutput)]
    texts = [o.outputs[0].text for o in sorted(generated, key=lambda o: cast(int, o.request_id))]
    return {
        "decode_steps": len(decode_s),
        "decode_s": sum(decode_s),
        "phases": phases,
        "texts": texts,
    }


def _phases_ms(arm: dict[str, Any]) -> dict[str, float]:
    """Mean milliseconds per timed decode step in each phase of ``LLMEngine.step``."""
    steps = max(arm["decode_steps"], 1)
    return {
        f"{f.name[:-2]}_ms": 1000 * getattr(arm["phases"], f.name) / steps
        for f in fields(StepTimes)
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = EngineConfig(
        model=args.model, dtype=args.dtype, max_num_seqs=max(args.batch, 8), seed=0
    )
    engine = LLMEngine(config)
    assert engine.tokenizer is not None and engine.structured is not None
    docs = [DOCUMENTS[i % len(DOCUMENTS)] for i in range(args.batch)]
    prompts = [engine.tokenizer.apply_chat_template(extraction_messages(d)) for d in docs]
    common = {"temperature": 0.0, "max_tokens": args.max_tokens, "ignore_eos": True}
    free = SamplingParams(**common)  # type: ignore[arg-type]
    schema = StructuredOutputsParams(json=SCHEMAS[args.schema])
    constrained = SamplingParams(**common, structured_outputs=schema)  # type: ignore[arg-type]
    _run_arm(engine, prompts[:4], free)  # warm-up: allocator, kernels
    rounds = []
    for _ in range(args.rounds):
        masks_before = (engine.structured.stats.mask_s, engine.structured.stats.num_mask_steps)
        plain = _run_arm(engine, prompts, free)
        masked = _run_arm(engine, prompts, constrained)
        stats = engine.structured.stats
        mask_steps = stats.num_mask_steps - masks_before[1]
        rounds.append(
            {
                "unconstrained_step_ms": 1000 * plain["decode_s"] / plain["decode_steps"],
                "constrained_step_ms": 1000 * masked["decode_s"] / masked["decode_steps"],
                "decode_steps": [plain["decode_steps"], masked["decode_steps"]],
                "mask_ms_per_step": 1000 * (stats.mask_s - masks_before[0]) / max(mask_steps, 1),
                "unconstrained_phases_ms": _phases_ms(plain),
                "constrained_phases_ms": _phases_ms(masked),
            }
        )
        sample = masked["texts"][0]
    plain_ms = sum(r["unconstrained_step_ms"] for r in rounds)
    masked_ms = sum(r["constrained_step_ms"] for r in rounds)
    # The forward pass is the same work in both arms; on a shared machine its time drifts by
    # more than the grammar costs, so the cost outside it is reported on its own too.
    plain_rest = sum(
        r["unconstrained_step_ms"] - r["unconstrained_phases_ms"]["forward_ms"] for r in rounds
    )
    masked_rest = sum(
        r["constrained_step_ms"] - r["constrained_phases_ms"]["forward_ms"] for r in rounds
    )
    stats = engine.structured.stats
    return {
        "batch": args.batch,
        "max_tokens": args.max_tokens,
        "schema": args.schema,
        "rounds": rounds,
        "overhead": masked_ms / plain_ms - 1.0,
        "overhead_outside_forward": (masked_rest - plain_rest) / plain_ms,
        "target_overhead": 0.10,
        "grammar_compiles": stats.num_compiles,
        "grammar_compile_s": stats.compile_s,
        "grammar_cache_hits": stats.num_cache_hits,
        "mask_ms_per_step": 1000 * stats.mask_s_per_step,
        "masked_rows_per_step": stats.num_masked_rows / max(stats.num_mask_steps, 1),
        "constrained_sample_text": sample,
    }


def compare_engines(args: argparse.Namespace) -> dict[str, Any]:
    """Compile time and per-token mask time of xgrammar and llguidance on SmolLM2's tokenizer,
    along the token sequences of valid answers (one per schema)."""
    import llguidance
    import llguidance.hf
    import llguidance.torch
    import xgrammar as xgr
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(args.model)
    with open(f"{args.model}/config.json") as handle:
        vocab_size = json.load(handle)["vocab_size"]
    examples = {
        "review": {
            "product": "AeroPress",
            "sentiment": "positive",
            "rating": 5,
            "price_usd": 39.95,
        },
        "invoice": {
            "invoice_number": "INV-2024001",
            "vendor": {"name": "Acme Tools GmbH", "country": "Germany"},
            "items": [
                {"description": "steel hammer", "quantity": 3, "unit_price": 12.5},
                {"description": "box of screws", "quantity": 10, "unit_price": 4.2},
            ],
            "total": 79.5,
        },
        "staff": {
            "name": "Maria Lopez",
            "age": 34,
            "is_manager": True,
            "remote": False,
            "years_at_company": 6,
        },
    }
    xgr_info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size)
    llg_tok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab_size)  # type: ignore[arg-type]
    results: dict[str, Any] = {}
    for name, schema in SCHEMAS.items():
        tokens = hf.encode(json.dumps(examples[name]), add_special_tokens=False)
        text = json.dumps(schema)
        compiler = xgr.GrammarCompiler(xgr_info, max_threads=1, cache_enabled=False)
        start = time.perf_counter()
        compiled = compiler.compile_json_schema(text, any_whitespace=False)
        xgr_compile = time.perf_counter() - start
        matcher = xgr.GrammarMatcher(compiled)
        bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        xgr_mask = []
        for token in tokens:
            start = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask, 0)
            xgr_mask.append(time.perf_counter() - start)
            assert matcher.accept_token(token), name
        start = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            text, defaults={"whitespace_flexible": True}
        )
        llg = llguidance.LLMatcher(llg_tok, grammar)
        llg_compile = time.perf_counter() - start
        assert not llg.is_error(), llg.get_error()
        llg_bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
        llg_mask = []
        for token in tokens:
            start = time.perf_counter()
            llguidance.torch.fill_next_token_bitmask(llg, llg_bitmask, 0)
            llg_mask.append(time.perf_counter() - start)
            assert llg.consume_token(token), (name, llg.get_error())
        results[name] = {
            "tokens": len(tokens),
            "xgrammar_compile_ms": 1000 * xgr_compile,
            "xgrammar_mask_us_mean": 1e6 * statistics.mean(xgr_mask),
            "xgrammar_mask_us_max": 1e6 * max(xgr_mask),
            "llguidance_compile_ms": 1000 * llg_compile,
            "llguidance_mask_us_mean": 1e6 * statistics.mean(llg_mask),
            "llguidance_mask_us_max": 1e6 * max(llg_mask),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="0: compare the engines only")
    parser.add_argument("--schema", default="invoice", choices=sorted(SCHEMAS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--compare-engines", action="store_true")
    parser.add_argument("--name", default="structured_outputs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"measured": measure(args)} if args.rounds else {}
    if args.compare_engines:
        result["engines"] = compare_engines(args)
    print(json.dumps(result, indent=2))
    write_result(args.name, result)


if __name__ == "__main__":
    main()
