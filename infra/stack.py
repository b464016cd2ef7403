"""The local stack for one machine: Redis (when none answers), the API, one worker, Flower.

    kvbatch up
      ├── redis-server   only when nothing answers at KVBATCH_REDIS_URL; AOF under var/redis
      ├── kvbatch serve  API on 127.0.0.1:PORT, ready when /health says 200
      ├── kvbatch worker one engine, Celery beat embedded, ready when it answers a ping
      └── kvbatch flower 127.0.0.1 only, behind basic auth, ready when it serves /

Every child is a subprocess with its log under ``var/logs/``; :meth:`LocalStack.stop` stops
them in reverse order (Redis last, so the worker can still hand back its shard) and touches
nothing it did not start: a Redis that was already running is only used.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from infra.harness.process import ManagedProcess
from infra.harness.readiness import http_ok, ping_workers, wait_until
from infra.harness.redis_server import (
    free_port,
    own_redis_port,
    port_is_free,
    redis_answers,
    start_redis,
    with_port,
)
from infra.model_command import resolve_model
from infra.stack_config import StackConfig
from jobs.settings import Settings

DEV_TENANT = "dev"


class StackError(RuntimeError):
    """The stack cannot start as asked; the message says why."""


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop`; see the module doc."""

    def __init__(self, config: StackConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console(stderr=True)
        self.var_dir = config.var_dir.resolve()
        self.processes: list[ManagedProcess] = []
        self.env = self._child_env()
        self.settings = Settings.from_env(self.env)
        self.api_url = f"http://127.0.0.1:{config.api_port}"
        self.flower_url = f"http://127.0.0.1:{config.flower_port}" if config.flower_port else None
        self.worker_name = f"kvbatch-{secrets.token_hex(3)}@{os.uname().nodename}"

    @property
    def api_key(self) -> str:
        return next(iter(self.settings.api.api_keys))

    @property
    def flower_auth(self) -> str:
        return self.env["KVBATCH_FLOWER_BASIC_AUTH"]

    def _child_env(self) -> dict[str, str]:
        """os.environ, the stack's defaults where the user set nothing, then config.env."""
        env = dict(os.environ)
        defaults = {
            "KVBATCH_STORAGE_DIR": str(self.var_dir / "storage"),
            "KVBATCH_BEAT_SCHEDULE_PATH": str(self.var_dir / "celerybeat-schedule"),
            "KVBATCH_API_KEYS": f"kvb-dev-{secrets.token_urlsafe(18)}:{DEV_TENANT}",
            "KVBATCH_FLOWER_BASIC_AUTH": f"admin:{secrets.token_urlsafe(12)}",
            "KVBATCH_METRICS_PORT": str(self.config.metrics_port),
        }
        for key, value in defaults.items():
            if not env.get(key):
                env[key] = value
        env.update(self.config.env)
        return env

    def start(self) -> None:
        """Start every part and wait until each is ready; on failure stop what started."""
        try:
            self._check_ports()
            model_dir = self._resolve_model()
            self._ensure_redis()
            self._start_api()
            self._start_worker(model_dir)
            self._start_flower()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what this stack started, newest first; a pre-existing Redis is left alone."""
        self._stop_where(lambda process: True)

    def stop_services(self) -> None:
        """Stop everything but our own Redis (so callers can still clean their keys)."""
        self._stop_where(lambda process: process.name != "redis")

    def _stop_where(self, wanted: Callable[[ManagedProcess], bool]) -> None:
        for process in reversed([p for p in self.processes if wanted(p)]):
            self.processes.remove(process)
            code = process.stop()
            if code is None:
                self.console.print(
                    f"[red]{process.name} (pid {process.pid}) outlived SIGKILL; left behind"
                )
            else:
                self.console.print(
                    f"[dim]stopped {process.name} (pid {process.pid}, status {code})"
                )

    def _check_ports(self) -> None:
        for name, port in (("API", self.config.api_port), ("Flower", self.config.flower_port)):
            if port is not None and not port_is_free(port):
                raise StackError(f"port {port} for the {name} is taken; choose another port")

    def _resolve_model(self) -> Path:
        model_dir = resolve_model(self.config.model).resolve()
        if not self.env.get("KVBATCH_MODELS"):
            # Served under the directory's name: a known model's name for a fetched one.
            self.env["KVBATCH_MODELS"] = f"{model_dir.name}={model_dir}"
            self.settings = Settings.from_env(self.env)
        return model_dir

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.var_dir / "logs" / f"{name}.log", self.env)
        self.processes.append(process)
        self.console.print(f"[dim]started {name} (pid {process.pid}), log {process.log_path}")
        return process

    def _ensure_redis(self) -> None:
        url = self.settings.redis.redis_url
        if redis_answers(url):
            self.console.print(f"using the Redis at {url}")
            return
        port = own_redis_port(url)
        own_url = with_port(url, port)
        process = start_redis(port, self.var_dir / "redis", self.var_dir / "logs" / "redis.log")
        self.processes.append(process)
        self.console.print(f"started redis-server (pid {process.pid}) at {own_url}, AOF on")
        wait_until(lambda: redis_answers(own_url), process, "PONG", 30)
        self.env["KVBATCH_REDIS_URL"] = own_url
        self.settings = Settings.from_env(self.env)

    def _kvbatch(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "infra.cli", *args]

    def _start_api(self) -> None:
        port = str(self.config.api_port)
        process = self._spawn("api", self._kvbatch("serve", "--host", "127.0.0.1", "--port", port))
        health = f"{self.api_url}/health"
        wait_until(lambda: http_ok(health), process, "/health", self.config.ready_timeout_s)

    def _start_worker(self, model_dir: Path) -> None:
        argv = self._kvbatch(
            "worker",
            "--model", str(model_dir),
            "--hostname", self.worker_name,
            "--beat",
        )  # fmt: skip
        if self.config.concurrency is not None:
            argv += ["--concurrency", str(self.config.concurrency)]
        process = self._spawn("worker", argv)
        broker = self.settings.redis.resolved_broker_url
        options = self.settings.redis.broker_transport_options()
        wait_until(
            lambda: bool(ping_workers(broker, options, [self.worker_name])),
            process,
            "Celery pong",
            self.config.ready_timeout_s,
        )

    def _start_flower(self) -> None:
        if self.config.flower_port is None or self.flower_url is None:
            return
        port = str(self.config.flower_port)
        process = self._spawn("flower", self._kvbatch("flower", "--port", port))
        user, _, password = self.flower_auth.partition(":")
        url = self.flower_url
        wait_until(lambda: http_ok(url, (user, password)), process, "HTTP 200", 60)


def pick_ports(config: StackConfig) -> StackConfig:
    """``config`` with free ports for the API, Flower and the worker's metrics (the demo
    runs beside anything)."""
    config.api_port = free_port()
    config.flower_port = free_port() if config.flower_port is not None else None
    config.metrics_port = free_port()
    return config
