"""A live kvbatch stack for worker tests: the API (uvicorn), moto S3, real Redis, and real
Celery worker *processes* started as subprocesses, all isolated by key prefix and queue."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from openai import OpenAI
from openai.types import Batch

from api.settings import Settings
from jobs.service_settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
SMOLLM2 = REPO / "models" / "smollm2-135m-instruct"


def service_env(settings: Settings, **worker: object) -> dict[str, str]:
    """The ``KVBATCH_*`` environment that points a worker at the same service as ``settings``."""
    env = dict(os.environ)
    for name in ServiceSettings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, dict | list):  # pydantic-settings reads them as JSON
            env[f"KVBATCH_{name.upper()}"] = json.dumps(value)
        elif value is not None:
            env[f"KVBATCH_{name.upper()}"] = str(value)
    for name, value in worker.items():
        env[f"KVBATCH_{name.upper()}"] = str(value)
    env.setdefault("KVBATCH_WORKER_MODEL", str(SMOLLM2))
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


class WorkerProcess:
    """``python -m celery -A worker.app worker --pool threads`` as a child process, or, with
    ``concurrency=None``, ``kvbatch worker --beat`` exactly as deployments start it;
    ``cpu`` runs it on that core alone."""

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
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={env['KVBATCH_SHARD_QUEUE']}",
            f"--hostname={name}",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            "--beat",
        ]
        if concurrency is None:
            model = env["KVBATCH_WORKER_MODEL"]
            argv = [sys.executable, "-m", "infra.cli", "worker", "--model", model]
            argv += ["--hostname", name, "--beat"]
        if cpu is not None:  # pinned to one core (benchmarks: one worker per "device")
            argv = ["taskset", "--cpu-list", str(cpu), *argv]
        # Its own process group: the embedded beat is a child process, and a SIGKILL of the
        # worker alone would leave it running.
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the worker and its beat child, as a crash would."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=30)
        self._signal_group(signal.SIGKILL)  # whatever of the group outlived the leader
        if not self._log.closed:
            self._log.close()


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


def wait_batch(client: OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 240) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"{batch_id} stuck in {batch.status}: {batch}"
        time.sleep(0.2)


def result_lines(client: OpenAI, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The output and error files' lines (empty when the batch has no such file)."""

    def read(file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        text = client.files.content(file_id).read().decode()
        return [json.loads(line) for line in text.splitlines() if line]

    return read(batch.output_file_id), read(batch.error_file_id)


def assert_each_once(
    custom_ids: list[str], outputs: list[dict[str, Any]], errors: list[dict[str, Any]]
) -> None:
    seen = Counter(line["custom_id"] for line in outputs + errors)
    assert seen == Counter(custom_ids), "every custom_id exactly once across both files"
