"""The ``kvbatch`` command: one entry point, a subcommand per job.

Each subcommand imports its room lazily, so ``kvbatch fetch-model`` does not load FastAPI and
``kvbatch serve`` does not load the model code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version

from infra.beat_command import add_beat_parser
from infra.demo_command import add_demo_parser
from infra.failures import describe
from infra.flower_command import add_flower_parser
from infra.generate_command import add_generate_parser
from infra.model_command import add_fetch_model_parser
from infra.run_batch_command import add_run_batch_parser
from infra.serve_command import add_serve_parser
from infra.up_command import add_up_parser
from infra.worker_command import add_worker_parser

Registrar = Callable[[argparse._SubParsersAction], None]

REGISTRARS: list[Registrar] = [
    add_demo_parser,
    add_up_parser,
    add_serve_parser,
    add_worker_parser,
    add_beat_parser,
    add_flower_parser,
    add_run_batch_parser,
    add_fetch_model_parser,
    add_generate_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvbatch", description="kvbatch: an OpenAI-compatible batch inference service."
    )
    parser.add_argument("--version", action="version", version=f"kvbatch {version('kvbatch')}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback when a command fails"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"kvbatch {args.command}: {describe(exc)}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
