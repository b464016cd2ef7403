"""``kvbatch demo``: start the stack, run the sample chat batch through the ``openai`` SDK,
print the answers, stop everything it started (the job itself is :mod:`infra.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infra.arg_types import positive_int
from infra.sample_batch import PROMPTS_FILE
from infra.stack_config import StackConfig
from infra.up_command import add_stack_arguments


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="start the stack, run the sample chat batch through it, stop it"
    )
    parser.add_argument("--prompts-file", type=Path, default=PROMPTS_FILE)
    parser.add_argument("--limit", type=positive_int, help="use only the first N prompts")
    parser.add_argument("--max-tokens", type=positive_int, default=64)
    parser.add_argument("--timeout", type=positive_int, default=1800, help="seconds to wait")
    add_stack_arguments(parser)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from infra.demo import run_demo

    config = StackConfig(var_dir=args.var_dir, model=args.model, concurrency=args.concurrency)
    return run_demo(args.prompts_file, args.limit, args.max_tokens, args.timeout, config)
