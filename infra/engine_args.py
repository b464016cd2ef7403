"""The engine's command-line arguments (``--model`` and the ``EngineConfig`` knobs), shared
by the subcommands that build an engine or hand one a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.model_fetch import ModelFetchError
from infra.arg_types import positive_int
from infra.model_command import resolve_model


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--block-size", type=positive_int, default=16)
    parser.add_argument("--max-num-batched-tokens", type=positive_int, default=2048)
    parser.add_argument("--max-num-seqs", type=positive_int, default=256)


def engine_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``EngineConfig`` keywords that :func:`add_engine_arguments` parsed."""
    return {
        "dtype": args.dtype,
        "device": args.device,
        "block_size": args.block_size,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_num_seqs": args.max_num_seqs,
    }


def model_dir_or_report(model: str, command: str) -> Path | None:
    """``--model`` resolved to a directory, or None after telling the user why not."""
    try:
        return resolve_model(model)
    except ModelFetchError as exc:
        print(f"kvbatch {command}: {exc}", file=sys.stderr)
        return None
