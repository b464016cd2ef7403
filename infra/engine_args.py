"""The engine's command-line arguments (``--model`` and the ``EngineConfig`` knobs), shared
by the subcommands that build an engine or hand one a model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.model_fetch import ModelFetchError
from infra.arg_types import positive_int
from infra.model_command import resolve_model

# The EngineConfig fields a command line may set, as ``--block-size`` for ``block_size``.
CLI_FIELDS = ("dtype", "device", "block_size", "max_num_batched_tokens", "max_num_seqs")
_HELP = {"dtype": "auto, float32, bfloat16 or float16", "device": "auto, cpu or cuda"}


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    names: tuple[str, ...] = CLI_FIELDS,
    defaults: dict[str, Any] | None = None,
) -> None:
    """A flag per EngineConfig field in ``names`` (``--block-size`` for ``block_size``), its
    type and default EngineConfig's own unless ``defaults`` gives another (a benchmark's)."""
    values = {field.name: field.default for field in fields(EngineConfig)} | (defaults or {})
    for name in names:
        flag = "--" + name.replace("_", "-")
        default = values[name]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
            continue
        kind: Callable[[str], Any] = positive_int
        if isinstance(default, float | str):
            kind = type(default)
        parser.add_argument(flag, type=kind, default=default, help=_HELP.get(name))


def engine_args(args: argparse.Namespace, names: tuple[str, ...] = CLI_FIELDS) -> dict[str, Any]:
    """The ``EngineConfig`` keywords that :func:`add_engine_arguments` parsed."""
    return {name: getattr(args, name) for name in names}


def model_dir_or_report(model: str, command: str) -> Path | None:
    """``--model`` resolved to a directory, or None after telling the user why not."""
    try:
        return resolve_model(model)
    except ModelFetchError as exc:
        print(f"kvbatch {command}: {exc}", file=sys.stderr)
        return None
