"""Redis Sentinel on loopback for failover tests and benchmarks: one master, one replica
and three sentinels, each a ``redis-server`` of its own."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from infra.harness.redis_server import RedisServer, free_port


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
