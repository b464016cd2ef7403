"""``kvbatch beat``: the Celery scheduler on its own, for deployments with many workers.

One scheduler per deployment is enough (a second only sweeps expiries twice); the local
stack instead embeds it in its single worker (``kvbatch worker --beat``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_beat_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "beat", help="run the Celery scheduler (batch expiry) alone; one per deployment"
    )
    parser.add_argument(
        "--schedule-file",
        type=Path,
        help="where beat remembers last run times (KVBATCH_BEAT_SCHEDULE_PATH)",
    )
    parser.set_defaults(handler=_run_beat)


def _run_beat(args: argparse.Namespace) -> int:
    from jobs.settings import Settings
    from worker.main import run_beat

    settings = Settings()
    if args.schedule_file is not None:
        settings = settings.updated(beat_schedule_path=args.schedule_file)
    run_beat(settings)
    return 0
