"""Celery worker processes for tests and benchmarks, pointed at a stack's service settings.

A worker is ``python -m celery -A worker.app worker --pool threads`` with the embedded beat,
or, with ``concurrency=None``, ``kvbatch worker --beat`` exactly as deployments start it.
It runs in its own process group (the embedded beat is a child process, and a SIGKILL of the
worker alone would leave it running), through :class:`~infra.harness.process.ManagedProcess`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from infra.harness.process import ManagedProcess
from infra.harness.service import REPO, SMOLLM2
from jobs.settings import Settings

# The API's own settings and Flower's stay out of a worker's environment; the worker section
# comes from the caller's ``worker`` choices.
_NOT_SHARED = frozenset({"api", "worker", "flower"})


def service_env(settings: Settings, **worker: object) -> dict[str, str]:
    """The ``KVBATCH_*`` environment that points a worker at the same service as ``settings``
    (``worker`` adds worker settings: ``worker_model=``, ``worker_served_name=``...)."""
    env = dict(os.environ) | settings.to_env(exclude=_NOT_SHARED)
    for name, value in worker.items():
        env[f"KVBATCH_{name.upper()}"] = str(value)
    env.setdefault("KVBATCH_WORKER_MODEL", str(SMOLLM2))
    if len(settings.serving.models) == 1 and "worker_served_name" not in worker:
        # A stack serving one model name: whatever model the worker holds (a tiny stand-in
        # for SmolLM2 in most tests) answers that name's shard queue.
        env["KVBATCH_WORKER_SERVED_NAME"] = next(iter(settings.serving.models))
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def worker_argv(env: dict[str, str], name: str, concurrency: int | None) -> list[str]:
    """The command line: Celery's own with ``concurrency`` threads, or ``kvbatch worker``;
    either consumes the queues of the worker's settings (worker/celeryconfig.py)."""
    if concurrency is None:
        model = env["KVBATCH_WORKER_MODEL"]
        return [sys.executable, "-m", "infra.cli", "worker", "--model", model]
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--hostname={name}",
        "--loglevel=INFO",
        "--without-mingle",
        "--without-gossip",
        "--beat",
    ]  # fmt: skip


class WorkerProcess:
    """One worker child; ``cpu`` pins it to that core alone (benchmarks: one per "device")."""

    def __init__(
        self,
        env: dict[str, str],
        name: str,
        log_path: Path,
        concurrency: int | None = 4,
        cpu: int | None = None,
    ):
        self.name = name
        self.log_path = log_path
        argv = worker_argv(env, name, concurrency)
        if concurrency is None:
            argv += ["--hostname", name, "--beat"]
        if cpu is not None:
            argv = ["taskset", "--cpu-list", str(cpu), *argv]
        self._managed = ManagedProcess(name, argv, log_path, env, cwd=REPO)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self._managed.popen

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]

    def kill(self) -> None:
        """SIGKILL the worker and its beat child, as a crash would."""
        self._managed.kill()

    def stop(self) -> None:
        """SIGTERM (a warm shutdown that hands shards back), SIGKILL after a minute."""
        self._managed.stop(timeout_s=60)


def worker_stats(client: redis.Redis, key_prefix: str, name: str) -> dict[str, float]:
    raw: Any = client.hgetall(f"{key_prefix}:workers:{name}")
    return {k: float(v) for k, v in raw.items()}


def wait_worker_ready(
    worker: WorkerProcess, client: redis.Redis, key_prefix: str, timeout_s: float = 180
) -> None:
    """Ready once the worker has loaded its engine and published stats."""
    deadline = time.monotonic() + timeout_s
    while not worker_stats(client, key_prefix, worker.name):
        assert worker.process.poll() is None, f"worker exited:\n{worker.log_tail()}"
        assert time.monotonic() < deadline, f"worker not ready:\n{worker.log_tail()}"
        time.sleep(0.2)
