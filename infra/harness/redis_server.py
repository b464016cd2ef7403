"""The local stack's own Redis: Debian's ``redis-server`` with the append-only file on.

Started only when nothing answers at the configured URL. It keeps its data under the stack's
``var/`` folder (``appendonly yes``, ``appendfsync everysec``: a crash loses about a second of
writes), so stopping and restarting ``kvbatch up`` keeps every batch.
"""

from __future__ import annotations

import shutil
import socket
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


def start_redis(port: int, data_dir: Path, log_path: Path) -> ManagedProcess:
    """Start ``redis-server`` on 127.0.0.1:``port`` with AOF under ``data_dir``."""
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
    ]  # fmt: skip
    return ManagedProcess("redis", argv, log_path)
