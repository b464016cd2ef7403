"""Starting a kvbatch worker in this process: one engine, a thread pool of shard tasks.

The pool's size only bounds how many shards the worker may hold at once; when it takes the
next one is up to its intake (worker/intake.py), from the engine's capacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jobs.settings import Settings, get_settings, use_settings
from worker.settings import consumed_queues


def worker_argv(
    concurrency: int,
    *,
    queues: Sequence[str],
    beat: bool = False,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """The ``celery worker`` command line: a thread pool, so every task shares the engine."""
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        "--task-events",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if beat:
        argv.append("--beat")
    return argv


def run_worker(
    model_dir: str | Path,
    concurrency: int | None = None,
    *,
    beat: bool = False,
    hostname: str | None = None,
    queues: Sequence[str] | None = None,
    served_name: str | None = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker holding the engine of ``model_dir`` until it is shut down.

    Up to ``concurrency`` shard tasks run at once, all feeding the same engine (unset:
    ``KVBATCH_SHARD_THREADS``, or a quarter of the engine's ``max_num_seqs``); ``beat`` embeds
    the scheduler of ``kvbatch.expire_batches`` (run it in one process per deployment).
    It consumes the shard queue of ``served_name`` (unset: ``KVBATCH_WORKER_SERVED_NAME``,
    else derived from ``model_dir``: :func:`worker.settings.served_name`) and housekeeping.
    Other settings come from ``KVBATCH_*`` variables (jobs/settings.py).
    """
    update: dict[str, str] = {"worker_model": str(model_dir)}
    if served_name:
        update["worker_served_name"] = served_name
    settings = get_settings().updated(**update)
    use_settings(settings)
    from worker.app import celery_app, configure

    configure(settings)
    argv = worker_argv(
        concurrency or settings.worker.shard_threads_or_default(),
        queues=queues or consumed_queues(settings),
        beat=beat,
        hostname=hostname,
        loglevel=loglevel,
    )
    celery_app.worker_main(argv)


def run_beat(settings: Settings | None = None, loglevel: str = "INFO") -> None:
    """Run Celery beat in this process (blocks) with the worker app's schedule (once per
    deployment; ``kvbatch worker --beat`` embeds it instead)."""
    if settings is not None:
        use_settings(settings)
    settings = get_settings()
    from worker.app import celery_app, configure

    configure(settings)
    celery_app.start(argv=["beat", f"--loglevel={loglevel}"])
