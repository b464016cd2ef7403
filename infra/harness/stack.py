"""A live stack: the API in a thread, moto S3 and Redis, plus worker processes started on
demand, all under one key prefix; used by the worker tests and the benchmarks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from openai import OpenAI

from infra.harness.service import LiveServer, make_settings, run_server
from infra.harness.workers import WorkerProcess, service_env, wait_worker_ready
from jobs.settings import Settings


@dataclass(slots=True)
class Stack:
    server: LiveServer
    settings: Settings
    redis: redis.Redis
    tmp: Path
    worker_settings: dict[str, object]
    workers: list[WorkerProcess] = field(default_factory=list)

    def client(self) -> OpenAI:
        return self.server.client()

    def start_worker(
        self, concurrency: int | None = 4, wait: bool = True, **overrides: object
    ) -> WorkerProcess:
        """A worker process; ``concurrency=None`` starts it as ``kvbatch worker`` does;
        ``overrides`` change its worker settings (``worker_model=``...); ``wait=False``
        returns before it is ready (start several, then :meth:`wait_ready`)."""
        name = f"w{len(self.workers)}-{secrets.token_hex(3)}@test"
        env = service_env(self.settings, **{**self.worker_settings, **overrides})
        worker = WorkerProcess(env, name, self.tmp / f"{name}.log", concurrency)
        self.workers.append(worker)
        if wait:
            wait_worker_ready(worker, self.redis, self.settings.redis.key_prefix)
        return worker

    def wait_ready(self) -> None:
        """Wait until every worker started so far is ready."""
        for worker in self.workers:
            wait_worker_ready(worker, self.redis, self.settings.redis.key_prefix)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()


@contextmanager
def open_stack(
    prefix: str,
    tmp: Path,
    s3_url: str,
    client: redis.Redis,
    settings_overrides: dict[str, object] | None = None,
    **worker_settings: object,
) -> Iterator[Stack]:
    settings = make_settings(
        "s3", prefix, tmp, s3_url, **{"shard_size": 16, **(settings_overrides or {})}
    )
    defaults: dict[str, object] = {
        "stats_interval_s": 0.3,
        "expiry_interval_s": 2,
        "stop_poll_s": 0.3,
        "beat_schedule_path": tmp / "beat-schedule",
        "shard_lease_s": 6,
        "unacked_restore_interval_s": 1,
    }
    with running_stack(settings, client, tmp, {**defaults, **worker_settings}) as stack:
        yield stack


@contextmanager
def running_stack(
    settings: Settings, client: redis.Redis, tmp: Path, worker_settings: dict[str, object]
) -> Iterator[Stack]:
    """The API on ``settings`` in a thread; the workers the caller starts are stopped on exit."""
    with run_server(settings) as server:
        stack = Stack(server, settings, client, tmp, worker_settings)
        try:
            yield stack
        finally:
            stack.stop_workers()
