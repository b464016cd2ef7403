"""``kvbatch run-batch``: a whole batch file through one engine, no service (local or s3://)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infra.engine_args import CLI_FIELDS, add_engine_arguments, engine_args, model_dir_or_report
from infra.failures import CommandFailed, require_weights
from jobs.settings_sections import parse_pairs

LORA_FIELDS = (*CLI_FIELDS, "max_loras", "max_lora_rank")


def add_run_batch_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run-batch", help="answer a batch JSONL file offline (paths or s3:// URLs)"
    )
    parser.add_argument("-i", "--input", required=True, help="batch input: path or s3://bucket/key")
    parser.add_argument(
        "-o", "--output", required=True, help="answers JSONL: path or s3://bucket/key"
    )
    parser.add_argument(
        "--errors",
        help="error lines JSONL (OpenAI's error-file shape): path or s3://bucket/key "
        "(default: the output's name with .errors.jsonl)",
    )
    parser.add_argument("--model", required=True, help="model directory or known model name")
    parser.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="LoRA adapters (PEFT directories, local or s3://) that a line's model may name",
    )
    add_engine_arguments(parser, LORA_FIELDS)
    parser.set_defaults(handler=_run_batch)


def errors_path_for(output: str) -> str:
    """``out.jsonl`` -> ``out.errors.jsonl`` (a path or an s3:// URL)."""
    stem = output.removesuffix(".jsonl")
    return f"{stem}.errors.jsonl"


def _check_local(input_url: str, *outputs: str) -> None:
    """A missing input or output folder is the user's to fix: we never create folders."""
    if not input_url.startswith("s3://") and not Path(input_url).is_file():
        raise CommandFailed(f"input file {input_url} does not exist")
    for url in outputs:
        folder = Path(url).resolve().parent
        if not url.startswith("s3://") and not folder.is_dir():
            raise CommandFailed(f"folder {folder} for {url} does not exist: create it first")


def _run_batch(args: argparse.Namespace) -> int:
    errors = args.errors or errors_path_for(args.output)
    _check_local(args.input, args.output, errors)
    model_dir = model_dir_or_report(args.model, "run-batch")
    if model_dir is None:
        return 1
    require_weights(model_dir)
    from worker.offline import run_batch

    try:
        lora_modules = parse_pairs(",".join(args.lora_modules), "=")
    except ValueError as exc:
        raise CommandFailed(f"--lora-modules: {exc}") from exc
    counts = run_batch(
        args.input, args.output, errors, model_dir, lora_modules, **engine_args(args, LORA_FIELDS)
    )
    print(
        f"{counts.answered} lines answered into {args.output}, {counts.failed} failed into {errors}"
    )
    return 0
