"""The service's parts for tests and benchmarks: settings for a private stack on the shared
Redis, the API served in a thread or as a child process, and moto S3.

Every stack built here uses its own Redis key prefix and broker key prefix (and its own S3
bucket), so several run beside each other on one Redis without touching each other's data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import uvicorn
from moto.server import ThreadedMotoServer
from openai import OpenAI

from api.app import create_app
from infra.harness.process import ManagedProcess
from infra.harness.redis_server import free_port
from jobs.settings import Settings

REPO = Path(__file__).resolve().parents[2]
KEYS = {"key-alpha": "tenant-a", "key-beta": "tenant-b"}
MODEL = "smollm2-135m-instruct"
SMOLLM2 = REPO / "models" / MODEL
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(slots=True)
class LiveServer:
    url: str
    settings: Settings

    def client(self, key: str = "key-alpha") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)


def make_settings(
    backend: str, prefix: str, tmp: Path, s3_endpoint: str | None, **overrides: object
) -> Settings:
    """API settings for a private stack: ``KEYS``, SmolLM2 served as ``MODEL``, key prefix,
    broker prefix and queue under ``prefix``, ``backend`` storage (``local`` or ``s3``)."""
    values: dict[str, object] = {
        "api_keys": KEYS,
        "models": {MODEL: f"models/{MODEL}"},
        "redis_url": REDIS_URL,
        "key_prefix": f"{prefix}:{backend}",
        "broker_key_prefix": f"{prefix}:broker:{backend}:",
        "shard_queue": f"{prefix}.shards.{backend}",
        "storage_backend": backend,
        "storage_dir": tmp / "storage",
        "s3_bucket": f"kvbatch-{backend}-{secrets.token_hex(4)}",
        "s3_endpoint_url": s3_endpoint,
        "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing",
        "s3_create_bucket": True,
        "shard_size": 4,
        **overrides,
    }
    return Settings.from_flat(values)


@contextmanager
def run_server(settings: Settings) -> Iterator[LiveServer]:
    """Serve ``create_app(settings)`` with uvicorn on a free port in a background thread."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass(slots=True)
class PrivateStack:
    """A benchmark's private service on the shared Redis, with moto S3 running: its settings,
    scratch folder, key prefix and a Redis client; :meth:`close` deletes its keys and stops
    moto."""

    settings: Settings
    tmp: Path
    prefix: str
    redis: redis.Redis
    _resources: contextlib.ExitStack

    @classmethod
    def open(cls, **overrides: object) -> PrivateStack:
        resources = contextlib.ExitStack()
        endpoint = resources.enter_context(moto_s3())
        tmp = Path(tempfile.mkdtemp(prefix="kvbatch-bench-"))
        prefix = f"kvbatch-bench-{secrets.token_hex(4)}"
        settings = make_settings("s3", prefix, tmp, endpoint, **overrides)
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        return cls(settings, tmp, prefix, client, resources)

    def close(self) -> None:
        for key in self.redis.scan_iter(match=f"{self.prefix}*", count=1000):
            self.redis.delete(key)
        self._resources.close()


def api_env(settings: Settings) -> dict[str, str]:
    """Every API setting as the ``KVBATCH_*`` environment a child process reads."""
    env = dict(os.environ) | settings.to_env(exclude=frozenset({"worker", "flower"}))
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


class ApiProcess:
    """The API (``api.server.serve``) as a child process, so a caller can kill and restart it."""

    def __init__(self, settings: Settings | dict[str, str], log_path: Path) -> None:
        self.env = api_env(settings) if isinstance(settings, Settings) else settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._managed: ManagedProcess | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running child's handle; None before :meth:`start` and after :meth:`kill`."""
        return self._managed.popen if self._managed is not None else None

    def start(self, timeout_s: float = 60) -> None:
        code = f"from api.server import serve; serve(port={self.port})"
        argv = [sys.executable, "-c", code]
        self._managed = ManagedProcess("api", argv, self.log_path, self.env, cwd=REPO)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            assert self._managed.exit_code() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL after 30 s."""
        if self._managed is not None:
            self._managed.stop(timeout_s=30)
        self._managed = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._managed is not None and self._managed.exit_code() is None:
            self._managed.kill()
        self._managed = None
