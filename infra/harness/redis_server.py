"""The local stack's own Redis: Debian's ``redis-server`` with the append-only file on.

Started only when nothing answers at the configured URL. It keeps its data under the stack's
``var/`` folder (``appendonly yes``, ``appendfsync everysec``: a crash loses about a second of
writes), so stopping and restarting ``kvbatch up`` keeps every batch.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from infra.harness.process import ManagedProcess

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class RedisServerError(RuntimeError):
    """Our own Redis cannot be started; the message says what to do."""


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now.

    With ``SO_REUSEADDR``, as uvicorn and redis-server bind: a socket of a stack that just
    stopped, left in TIME_WAIT for a minute, does not count as taken.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def own_redis_port(url: str) -> int:
    """The configured port when it is ours to take (loopback, nothing bound), else a free one."""
    parts = urlsplit(url)
    port = parts.port or 6379
    if parts.hostname in LOOPBACK_HOSTS and port_is_free(port):
        return port
    return free_port()


def with_port(url: str, port: int) -> str:
    """``url`` pointed at 127.0.0.1:``port``, keeping its scheme, database and options."""
    parts = urlsplit(url)
    netloc = f"127.0.0.1:{port}"
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{parts.password}@{netloc}"
    return urlunsplit((parts.scheme or "redis", netloc, parts.path, parts.query, ""))


def start_redis(
    port: int, data_dir: Path, log_path: Path, extra_args: tuple[str, ...] = ()
) -> ManagedProcess:
    """Start ``redis-server`` on 127.0.0.1:``port`` with AOF under ``data_dir``;
    ``extra_args`` are more of its options (``--replicaof``, ``--maxmemory-policy``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError(
            "no Redis answers at the configured KVBATCH_REDIS_URL and redis-server is not "
            "installed: install it (`apt-get install redis-server`) or point "
            "KVBATCH_REDIS_URL at a running Redis"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--logfile", "",
        *extra_args,
    ]  # fmt: skip
    return ManagedProcess("redis", argv, log_path)


class RedisServer:
    """A private ``redis-server`` on a free loopback port (AOF on), stoppable and restartable
    with its data: for tests that break Redis on purpose, never the shared one."""

    def __init__(self, data_dir: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra_args = extra_args
        self._process: ManagedProcess | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        self._process = start_redis(
            self.port, self.data_dir, self.data_dir / "redis.log", self.extra_args
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM flushes the AOF (a clean restart); SIGKILL is a crash (up to ~1 s lost)."""
        if self._process is not None and self._process.exit_code() is None:
            if sig == signal.SIGKILL:
                self._process.kill()
            else:
                self._process.stop(timeout_s=20)
        self._process = None
