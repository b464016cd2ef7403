"""``kvbatch run-batch``: a whole batch file through one engine, no service (local or s3://)."""

from __future__ import annotations

import argparse

from infra.engine_args import add_engine_arguments, engine_args, model_dir_or_report


def add_run_batch_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run-batch", help="answer a batch JSONL file offline (paths or s3:// URLs)"
    )
    parser.add_argument("-i", "--input", required=True, help="batch input: path or s3://bucket/key")
    parser.add_argument(
        "-o", "--output", required=True, help="results JSONL: path or s3://bucket/key"
    )
    parser.add_argument("--model", required=True, help="model directory or known model name")
    add_engine_arguments(parser)
    parser.set_defaults(handler=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    model_dir = model_dir_or_report(args.model, "run-batch")
    if model_dir is None:
        return 1
    from worker.offline import run_batch

    num_lines = run_batch(args.input, args.output, model_dir, **engine_args(args))
    print(f"{num_lines} lines answered into {args.output}")
    return 0
