"""Real processes the fault tests break on purpose: a Redis of our own (AOF on), a pausable
TCP proxy in front of S3, and the API as a child process.

None of them ever touches the shared Redis at 6379: a test that restarts Redis restarts its
own instance, with its own data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from api.settings import Settings
from tests.api.conftest import free_port
from tests.worker.service import REPO


class RedisServer:
    """``redis-server`` on a free loopback port with ``appendonly yes``, restartable."""

    def __init__(self, data_dir: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    break
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM flushes the AOF (a clean restart); SIGKILL is a crash (up to ~1 s lost)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)
        self.process = None


class SentinelGroup:
    """One master, one replica (both AOF on) and three sentinels, all on loopback.

    The sentinels declare the master down after 1 s and fail over to the replica; ``url``
    is the ``sentinel://`` URL kvbatch takes for its state store and broker.
    """

    MASTER = "mymaster"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.master = RedisServer(data_dir / "master")
        self.replica = RedisServer(
            data_dir / "replica", "--replicaof", "127.0.0.1", str(self.master.port)
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.url = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url += "/0"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.data_dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n"
            )
            log = open(self.data_dir / f"sentinel-{port}.log", "ab")  # noqa: SIM115
            self.sentinels.append(
                subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=log, stderr=log)
            )
            log.close()
        deadline = time.monotonic() + 20
        while self.master_port() != self.master.port or not self._replica_synced():
            assert time.monotonic() < deadline, "sentinels or replica not ready"
            time.sleep(0.1)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.ConnectionError):
                client = redis.Redis(port=port, decode_responses=True)
                address: Any = client.sentinel_get_master_addr_by_name(self.MASTER)
                client.close()
                return int(address[1]) if address else None
        return None

    def _replica_synced(self) -> bool:
        client = redis.Redis(port=self.replica.port, decode_responses=True)
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
            process.wait(timeout=20)
        self.replica.stop()
        self.master.stop()


class TcpProxy:
    """Forwards a loopback port to ``target``; ``cut()`` refuses and drops every connection.

    While cut, the listening socket is closed, so clients see ``connection refused`` (what a
    dead S3 endpoint looks like) rather than a hang.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._serving = threading.Event()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._serving.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self._serving.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._serving.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while self._serving.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.5)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns -= {a, b}
            a.close()
            b.close()


def api_env(settings: Settings) -> dict[str, str]:
    """Every API setting as the ``KVBATCH_*`` environment a child process reads."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        env[f"KVBATCH_{name.upper()}"] = text
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


class ApiProcess:
    """``kvbatch serve`` as a child process, so a test can kill and restart it."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.env = api_env(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        code = f"from api.server import serve; serve(port={self.port})"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=self.env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)
        self.process = None
