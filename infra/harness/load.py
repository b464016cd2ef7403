"""Load on the API while a batch runs: concurrent clients poll the batch and list files.

Starts its own stack on this machine (the API as a child process, one worker process, the
local Redis under a private key prefix, local storage), submits a batch, and while the
worker runs it, ``clients`` asyncio clients (one aiohttp connection each) alternate
``GET /v1/batches/{id}`` and ``GET /v1/files``, ``interval_s`` seconds apart (0: as fast as
the API answers, which measures its saturation rather than a poller's latency).
``benchmarks/load_bench.py`` runs it at full size; a test runs it short.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from infra.harness.batches import chat_line, jsonl
from infra.harness.service import REDIS_URL, ApiProcess, LiveServer, make_settings
from infra.harness.workers import WorkerProcess, service_env, wait_worker_ready, worker_stats

API_KEY = "key-alpha"


@dataclass(slots=True)
class LoadReport:
    clients: int
    duration_s: float
    num_requests: int = 0
    num_errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms) or [0.0]

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2)

        data = asdict(self)
        del data["latencies_ms"]
        data.update(
            error_rate=self.num_errors / max(1, self.num_requests),
            requests_per_s=round(self.num_requests / self.duration_s, 1),
            p50_ms=pct(50),
            p90_ms=pct(90),
            p99_ms=pct(99),
            max_ms=round(lat[-1], 2),
            mean_ms=round(statistics.fmean(lat), 2),
        )
        return data


async def _client(
    http: aiohttp.ClientSession,
    batch_id: str,
    deadline: float,
    interval_s: float,
    report: LoadReport,
) -> None:
    paths = (f"/v1/batches/{batch_id}", "/v1/files?limit=20")
    turn = 0
    # Independent pollers are not in step: each starts at a random point of its interval
    # and waits 0.5-1.5 intervals between polls (the mean stays ``interval_s``).
    jitter = random.Random(id(http))
    await asyncio.sleep(jitter.uniform(0, interval_s))
    while time.monotonic() < deadline:
        path = paths[turn % 2]
        turn += 1
        start = time.perf_counter()
        try:
            async with http.get(path) as response:
                await response.read()
                ok = response.status == 200
                problem = f"{path}: {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, problem = False, f"{path}: {exc!r}"
        report.latencies_ms.append((time.perf_counter() - start) * 1000)
        report.num_requests += 1
        if not ok:
            report.num_errors += 1
            if len(report.error_samples) < 5:
                report.error_samples.append(problem)
        await asyncio.sleep(interval_s * jitter.uniform(0.5, 1.5))


async def run_load(
    url: str, batch_id: str, clients: int, duration_s: float, interval_s: float
) -> LoadReport:
    """``clients`` concurrent pollers for ``duration_s`` seconds against a running API, each
    waiting ``interval_s`` between its requests (0: a closed loop, the API's saturation).

    Each client is its own aiohttp session with one keep-alive connection, opened before
    the clock starts. aiohttp rather than httpx: its C parser keeps the load generator,
    which shares this machine's cores with the API, from being what the latencies measure.
    """
    report = LoadReport(clients, duration_s)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=10)
    sessions = [
        aiohttp.ClientSession(
            base_url=url,
            headers=headers,
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=1),
        )
        for _ in range(clients)
    ]
    try:

        async def warm(http: aiohttp.ClientSession) -> None:
            async with http.get("/health") as response:
                await response.read()

        await asyncio.gather(*(warm(http) for http in sessions))
        deadline = time.monotonic() + duration_s
        await asyncio.gather(
            *(_client(http, batch_id, deadline, interval_s, report) for http in sessions)
        )
    finally:
        await asyncio.gather(*(http.close() for http in sessions))
    return report


def run_bench(
    model: Path, clients: int, duration_s: float, interval_s: float, num_lines: int, tmp: Path
) -> dict[str, Any]:
    """Start the stack, submit a batch, load the API while it runs; the summary as a dict."""
    prefix = f"kvbatch-load-{secrets.token_hex(4)}"
    settings = make_settings("local", prefix, tmp, None, shard_size=16)
    api = ApiProcess(settings, tmp / "api.log")
    env = service_env(settings, worker_model=model, stats_interval_s=0.5)
    worker = WorkerProcess(env, f"load-{secrets.token_hex(3)}@bench", tmp / "worker.log", 2)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        api.start()
        wait_worker_ready(worker, client, settings.redis.key_prefix)
        sdk = LiveServer(api.url, settings).client(API_KEY)
        # Enough files that listing them does real work.
        for i in range(30):
            sdk.files.create(file=(f"f{i}.jsonl", jsonl([chat_line("x")])), purpose="batch")
        lines = [
            chat_line(f"l-{i}", f"Write about {i}.", max_tokens=64, ignore_eos=True)
            for i in range(num_lines)
        ]
        file = sdk.files.create(file=("load.jsonl", jsonl(lines)), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        before = worker_stats(client, settings.redis.key_prefix, worker.name)
        report = asyncio.run(run_load(api.url, batch.id, clients, duration_s, interval_s))
        after = worker_stats(client, settings.redis.key_prefix, worker.name)
        during = sdk.batches.retrieve(batch.id)
        counts = during.request_counts
        return {
            **report.summary(),
            "interval_s": interval_s,
            "batch_status_at_end": during.status,
            "batch_completed_at_end": counts.completed if counts else None,
            "batch_lines": num_lines,
            # Proof that the engine worked while the API was loaded (stats lag ~0.5 s).
            "engine_tokens_generated_during_load": int(
                after.get("num_generated_tokens", 0) - before.get("num_generated_tokens", 0)
            ),
            "model": str(model),
        }
    finally:
        worker.stop()
        api.kill()
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
