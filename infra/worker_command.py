"""``kvbatch worker``: one Celery worker process holding one engine (and, with ``--beat``,
the scheduler that runs the batch-expiry task)."""

from __future__ import annotations

import argparse

from infra.arg_types import positive_int
from infra.engine_args import model_dir_or_report
from infra.failures import require_redis, require_weights


def add_worker_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run a Celery worker that holds one engine")
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="model directory or known model name (default smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--served-name",
        default=None,
        help="the model name this worker serves: batches naming it come to its shard queue "
        "(default: the KVBATCH_MODELS name of --model's directory, else the directory's name)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="most shards held at once, all sharing the one engine (default: a quarter of "
        "the engine's max_num_seqs; the engine's capacity decides when to take the next)",
    )
    parser.add_argument("--hostname", help="Celery node name (default kvbatch@HOST)")
    parser.add_argument(
        "--beat", action="store_true", help="also run Celery beat (the batch-expiry schedule)"
    )
    parser.set_defaults(handler=_run_worker)


def _run_worker(args: argparse.Namespace) -> int:
    model_dir = model_dir_or_report(args.model, "worker")
    if model_dir is None:
        return 1
    require_weights(model_dir)
    from jobs.settings import Settings, use_settings

    settings = Settings()
    use_settings(settings)
    require_redis(settings.redis.redis_url, settings.redis.redis_sentinel_master)
    from worker.main import run_worker

    run_worker(
        model_dir=model_dir,
        concurrency=args.concurrency,
        beat=args.beat,
        hostname=args.hostname,
        served_name=args.served_name,
    )
    return 0
