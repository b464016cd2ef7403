"""``kvbatch generate``: the offline engine from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra.engine_args import add_engine_arguments, engine_args, model_dir_or_report


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="run prompts through the offline engine")
    parser.add_argument("--model", required=True, help="model directory or known model name")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", type=Path, help="one prompt per line")
    parser.add_argument("--chat", action="store_true", help="apply the model's chat template")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--n", type=int, default=1)
    add_engine_arguments(parser)
    parser.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from engine import LLM, SamplingParams

    prompts = list(args.prompt)
    if args.prompts_file:
        prompts += [ln for ln in args.prompts_file.read_text().splitlines() if ln.strip()]
    if not prompts:
        print("kvbatch generate: give --prompt or --prompts-file", file=sys.stderr)
        return 2
    model_dir = model_dir_or_report(args.model, "generate")
    if model_dir is None:
        return 1
    try:
        params = SamplingParams(
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            max_tokens=args.max_tokens,
        )
        llm = LLM(str(model_dir), **engine_args(args))
    except ValueError as exc:
        print(f"kvbatch generate: {exc}", file=sys.stderr)
        return 1
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    else:
        outputs = llm.generate(prompts, params)
    table = Table("prompt", "answer", show_lines=True)
    for prompt, output in zip(prompts, outputs, strict=True):
        table.add_row(prompt, "\n---\n".join(o.text.strip() for o in output.outputs))
    console = Console()
    console.print(table)
    stats = llm.engine.stats
    console.print(
        f"{len(prompts)} prompts, {stats.num_generated_tokens} tokens generated in "
        f"{stats.num_steps} steps ({stats.busy_time_s:.1f}s engine time, "
        f"prefix-cache hit rate {stats.prefix_hit_rate:.0%})"
    )
    return 0
