"""Every engine full by default: workers started as deployments start them, no worker flags.

One worker process runs ``kvbatch worker`` (its thread count and intake come from its
engine), behind the API under uvicorn, Redis and S3 (moto). Arms, alternated in rounds so
that a noisy neighbour hits all of them:

- ``offline``: ``LLM.chat`` on N requests in this process;
- ``one``: the same N as one batch through the service (the API's default shard size);
- ``many``: B concurrent batches of N/B;
- ``shards_<k>``: the N requests as one batch cut into shards of k lines (one API server
  per shard size, all in front of the same worker and queue).

Targets: many/one <= 1.05; shards_k/shards_N <= 1.05 for every k; offline/one >= 0.97;
the engine idle while shards waited in the queue < 2 % of each run (the worker's own
``engine_idle_with_queued_work_s``). The worker's occupancy (requests per step over
``max_num_seqs``) is sampled through the smallest-shard run to show it across shard
boundaries.

``--scale``: then R requests as one batch, on one worker against two workers on the same
queue, each worker pinned to its own core with one torch thread (the stand-in for one
accelerator each on this CPU-only machine). Target: two/one <= 0.6.

The worker publishes its stats every 0.25 s here (``KVBATCH_STATS_INTERVAL_S``, a
monitoring setting) so that the run's deltas and the occupancy trace are sharp.

Usage: python -m benchmarks.engine_full --requests 512 --batches 8 --max-tokens 8 \
           --rounds 3 --scale 1024
"""

from __future__ import annotations

import argparse
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import redis
import torch

from benchmarks.common import write_result
from benchmarks.service_vs_offline import lines, run_offline, run_service
from engine import LLM, SamplingParams
from infra.harness.service import SMOLLM2, PrivateStack, run_server
from infra.harness.workers import WorkerProcess, service_env, wait_worker_ready
from jobs.settings_sections import LimitsSection

SALTS = iter("ABCDEFGHIJKLMNOPQRSTUVXYZabcdefghijklmnopqrstuvwxyz")  # W: the warm-up's
DEFAULT_SHARD_SIZE = LimitsSection().shard_size


def prompts(count: int) -> list[str]:
    """``count`` chat prompts under a fresh one-letter salt (no run finds another's cache)."""
    salt = next(SALTS)
    return [f"[{salt}] In one sentence, what is item {i}?" for i in range(count)]


class WorkerStats:
    """The worker's stats hash, read before and after each run (and sampled in between)."""

    def __init__(self, client: redis.Redis, key_prefix: str, names: list[str]) -> None:
        self._client = client
        self._keys = [f"{key_prefix}:workers:{name}" for name in names]

    def read(self) -> list[dict[str, float]]:
        rows: list[Any] = [self._client.hgetall(key) for key in self._keys]
        return [{k: float(v) for k, v in row.items()} for row in rows]

    def summed(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for row in self.read():
            for key, value in row.items():
                total[key] = total.get(key, 0.0) + value
        return total


def measured(
    stats: WorkerStats, run: Callable[[], float], capacity: int, sample: bool = False
) -> dict[str, Any]:
    """Run one arm; its seconds, engine occupancy and waste from the worker's counters."""
    time.sleep(0.6)  # the stats of the previous run are published
    before = stats.summed()
    trace: list[tuple[float, float, float, float]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sampler() -> None:
        while not stop.wait(0.25):
            row = stats.read()[0]
            trace.append(
                (
                    round(time.monotonic() - start, 2),
                    round(row.get("engine_occupancy_now", 0.0), 3),
                    row.get("intake_outstanding", 0.0),
                    row.get("intake_shards_held", 0.0),
                )
            )

    thread = threading.Thread(target=sampler, daemon=True)
    if sample:
        thread.start()
    seconds = run()
    stop.set()
    if sample:
        thread.join()
    time.sleep(0.6)
    after = stats.summed()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    workers = len(stats.read())
    result: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "occupancy": round(delta["engine_request_seconds"] / (capacity * workers * seconds), 3),
        "idle_with_queued_work_s": round(delta["engine_idle_with_queued_work_s"], 3),
        "idle_with_queued_work_fraction": round(
            delta["engine_idle_with_queued_work_s"] / (workers * seconds), 4
        ),
        "engine_busy_fraction": round(delta["engine_busy_s"] / (workers * seconds), 3),
        "shards_taken": delta.get("intake_shards_taken", 0.0),
    }
    if sample:
        result["trace"] = {
            "columns": ["t_s", "occupancy_now", "outstanding", "shards_held"],
            "rows": trace,
        }
    return result


@contextmanager
def worker(
    env: dict[str, str],
    name: str,
    tmp: Path,
    client: redis.Redis,
    key_prefix: str,
    cpu: int | None = None,
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(env, name, tmp / f"{name}.log", concurrency=None, cpu=cpu)
    try:
        wait_worker_ready(process, client, key_prefix)
        yield process
    finally:
        process.stop()


def one_thread(env: dict[str, str]) -> dict[str, str]:
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ratio(arms: dict[str, list[dict[str, Any]]], top: str, bottom: str) -> float:
    return round(sum(r["seconds"] for r in arms[top]) / sum(r["seconds"] for r in arms[bottom]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[16, 64, 512])
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=0, help="requests of the 1-vs-2 workers run")
    parser.add_argument("--scale-rounds", type=int, default=2)
    parser.add_argument(
        "--scale-shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="the API's shard size for the 1-vs-2 workers run (one of --shard-sizes)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the offline engine and of the worker (0: torch's default); "
        "1 keeps a crowded shared machine from stalling a step on its slowest thread",
    )
    parser.add_argument("--name", default="engine_full")
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument(
        "--throughput-only", action="store_true", help="only the offline and one-batch arms"
    )
    args = parser.parse_args()
    n, mt = args.requests, args.max_tokens
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(model=str(SMOLLM2))
    capacity = llm.engine.config.max_num_seqs  # the worker's engine has the same default
    llm.chat(
        [[{"role": "user", "content": "warm up"}]], SamplingParams(max_tokens=2), use_tqdm=False
    )

    private = PrivateStack.open(shard_size=DEFAULT_SHARD_SIZE)
    tmp, prefix, client_redis, base = private.tmp, private.prefix, private.redis, private.settings
    key_prefix = base.redis.key_prefix
    env = service_env(base, beat_schedule_path=tmp / "beat", stats_interval_s=0.25)
    if args.threads:
        env = {**env, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    arms: dict[str, list[dict[str, Any]]] = {}
    scale: dict[str, list[dict[str, Any]]] = {}
    try:
        with ExitStack() as stack:
            servers = {
                size: stack.enter_context(run_server(base.updated(shard_size=size))).client()
                for size in sorted({DEFAULT_SHARD_SIZE, *args.shard_sizes})
            }
            api = servers[DEFAULT_SHARD_SIZE]
            name = f"bench-{prefix}@host"
            with worker(env, name, tmp, client_redis, key_prefix):
                stats = WorkerStats(client_redis, key_prefix, [name])
                run_service(api, [lines(prompts(8), "warm", 2)], args.poll_s)
                for _ in range(args.rounds):
                    texts = prompts(n)
                    off = run_offline(llm, texts, mt)
                    arms.setdefault("offline", []).append({"seconds": round(off, 2)})
                    poll = args.poll_s
                    runs: dict[str, Callable[[], float]] = {
                        "one": partial(run_service, api, [lines(texts, "one", mt)], poll),
                        "many": partial(
                            run_service, api, split(prompts(n), args.batches, mt), poll
                        ),
                    }
                    for size in args.shard_sizes:
                        batch = [lines(prompts(n), f"s{size}", mt)]
                        runs[f"shards_{size}"] = partial(run_service, servers[size], batch, poll)
                    if args.throughput_only:
                        runs = {"one": runs["one"]}
                    smallest = f"shards_{min(args.shard_sizes)}"
                    for arm, run in runs.items():
                        first = arm == smallest and arm not in arms
                        arms.setdefault(arm, []).append(measured(stats, run, capacity, first))
            if args.scale:
                scale_api = servers[args.scale_shard_size]
                scale = run_scale(args, env, tmp, client_redis, key_prefix, scale_api, capacity)
    finally:
        private.close()

    biggest = f"shards_{max(args.shard_sizes)}"
    offline_s = sum(r["seconds"] for r in arms["offline"])
    one_s = sum(r["seconds"] for r in arms["one"])
    result: dict[str, Any] = {
        "model": SMOLLM2.name,
        "requests": n,
        "max_tokens": mt,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "worker": "kvbatch worker --model M --hostname H --beat (no other flag: defaults)",
        "engine_capacity": capacity,
        "api_default_shard_size": DEFAULT_SHARD_SIZE,
        "arms": arms,
        "targets": {
            "offline_vs_service": {"ratio": round(offline_s / one_s, 3), "target": ">= 0.97"},
            "idle_with_queued_work_fraction_max": {
                "value": max(
                    r["idle_with_queued_work_fraction"]
                    for arm, rs in arms.items()
                    if arm != "offline"
                    for r in rs
                ),
                "target": "< 0.02",
            },
        },
    }
    if not args.throughput_only:
        result["targets"]["many_vs_one"] = {
            "ratio": ratio(arms, "many", "one"),
            "target": "<= 1.05",
        }
        result["targets"]["shards_vs_one_shard"] = {
            arm: {"ratio": ratio(arms, arm, biggest), "target": "<= 1.05"}
            for arm in arms
            if arm.startswith("shards_") and arm != biggest
        }
    if scale:
        result["scale"] = {
            "requests": args.scale,
            "shard_size": args.scale_shard_size,
            "pinning": "each worker on its own core (taskset), OMP_NUM_THREADS=1",
            "arms": scale,
            "two_vs_one": {"ratio": ratio(scale, "two", "one"), "target": "<= 0.6"},
        }
    print(write_result(args.name, result))
    print({k: v for k, v in result["targets"].items()}, result.get("scale", {}).get("two_vs_one"))


def split(texts: list[str], batches: int, max_tokens: int) -> list[list[dict[str, Any]]]:
    per = len(texts) // batches
    return [lines(texts[b * per : (b + 1) * per], f"b{b}", max_tokens) for b in range(batches)]


def run_scale(
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    client_redis: redis.Redis,
    key_prefix: str,
    api: Any,
    capacity: int,
) -> dict[str, list[dict[str, Any]]]:
    """One pinned worker against two on the same queue, the same batch size, in rounds."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for round_index in range(args.scale_rounds):
        for arm, cores in (("one", [0]), ("two", [0, 1])):
            names = [f"scale{round_index}{arm}{core}-{secrets.token_hex(2)}@host" for core in cores]
            with ExitStack() as stack:
                for core, name in zip(cores, names, strict=True):
                    stack.enter_context(
                        worker(one_thread(env), name, tmp, client_redis, key_prefix, core)
                    )
                stats = WorkerStats(client_redis, key_prefix, names)
                texts = prompts(args.scale)

                def run(texts: list[str] = texts) -> float:
                    return run_service(api, [lines(texts, "scale", args.max_tokens)], args.poll_s)

                row = measured(stats, run, capacity)
                row["per_worker_shards"] = [r.get("intake_shards_taken", 0) for r in stats.read()]
                arms.setdefault(arm, []).append(row)
    return arms


if __name__ == "__main__":
    main()
