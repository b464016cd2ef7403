"""Upload a 50,000-request (~195 MB) batch file through the official SDK and time intake.

Starts the API as a subprocess (local storage in a temp directory, the Redis at
127.0.0.1:6379 under a throwaway key prefix), polls the server process's RSS the whole time,
uploads with ``client.files.create``, creates the batch, and waits until it is validated and
sharded (``in_progress``). Writes ``benchmarks/results/upload_bench.json`` and ``.md``.

    python benchmarks/upload_bench.py [--lines 50000] [--line-bytes 3900]
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis
from openai import OpenAI

from benchmarks.common import parse_options
from infra.harness.service import ApiProcess

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "smollm2-135m-instruct"


def write_input(path: Path, num_lines: int, line_bytes: int) -> int:
    """Write ``num_lines`` chat requests padded to about ``line_bytes`` each; returns size."""
    template = {
        "custom_id": "",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": ""}], "max_tokens": 64},
    }
    overhead = len(json.dumps(template)) + 12
    with path.open("wb") as handle:
        for i in range(num_lines):
            template["custom_id"] = f"req-{i:06d}"
            template["body"]["messages"][0]["content"] = "lorem ipsum " * (  # type: ignore[index]
                (line_bytes - overhead) // 12
            )
            handle.write(json.dumps(template).encode() + b"\n")
    return path.stat().st_size


class RssSampler(threading.Thread):
    """Polls a process's resident set size every ``interval_s`` and keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(self.interval_s)


def run(num_lines: int, line_bytes: int) -> dict[str, object]:
    prefix = f"kvbatch-bench-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="kvbatch-bench-") as tmp:
        input_path = Path(tmp) / "input.jsonl"
        size = write_input(input_path, num_lines, line_bytes)
        env = {
            **os.environ,
            "KVBATCH_API_KEYS": "bench-key:bench",
            "KVBATCH_MODELS": f"{MODEL}=models/{MODEL}",
            "KVBATCH_KEY_PREFIX": prefix,
            "KVBATCH_BROKER_KEY_PREFIX": f"{prefix}:broker:",
            "KVBATCH_STORAGE_DIR": str(Path(tmp) / "storage"),
        }
        server = ApiProcess(env, Path(tmp) / "api.log")
        server.start()
        assert server.process is not None
        sampler = RssSampler(server.process.pid)
        sampler.start()
        idle_rss = psutil.Process(server.process.pid).memory_info().rss
        try:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="bench-key", timeout=600)
            t0 = time.perf_counter()
            with input_path.open("rb") as handle:
                file = client.files.create(file=("input.jsonl", handle), purpose="batch")
            t1 = time.perf_counter()
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while (batch := client.batches.retrieve(batch.id)).status == "validating":
                time.sleep(0.05)
            t2 = time.perf_counter()
        finally:
            sampler.stop.set()
            sampler.join()
            server.stop()
            client_redis = redis.Redis()
            for key in client_redis.scan_iter(match=f"{prefix}*"):
                client_redis.delete(key)
        assert batch.status == "in_progress", batch.errors
        counts = batch.request_counts
        return {
            "lines": num_lines,
            "file_bytes": size,
            "upload_s": round(t1 - t0, 2),
            "validate_and_shard_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2),
            "upload_mb_per_s": round(size / 1e6 / (t1 - t0), 1),
            "server_idle_rss_mb": round(idle_rss / 2**20, 1),
            "server_peak_rss_mb": round(sampler.peak / 2**20, 1),
            "rss_target_mb": 300,
            "requests_total": counts.total if counts else None,
            "batch_status": batch.status,
            "hardware": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                "python": platform.python_version(),
            },
            "command": "python benchmarks/upload_bench.py "
            f"--lines {num_lines} --line-bytes {line_bytes}",
        }


def write_markdown(result: dict[str, object], path: Path) -> None:
    hw = result["hardware"]
    assert isinstance(hw, dict)
    path.write_text(
        "# Upload + intake benchmark\n\n"
        f"`{result['command']}` on {hw['cores']} CPU cores, {hw['memory_gb']} GiB RAM, "
        f"Python {hw['python']}; local storage, Redis on loopback.\n\n"
        "| lines | file MB | upload s | validate+shard s | total s | server peak RSS MB |\n"
        "|---|---|---|---|---|---|\n"
        f"| {result['lines']} | {int(result['file_bytes']) / 1e6:.1f} | {result['upload_s']} "  # type: ignore[call-overload]
        f"| {result['validate_and_shard_s']} | {result['total_s']} "
        f"| {result['server_peak_rss_mb']} (idle {result['server_idle_rss_mb']}) |\n"
    )


def main() -> None:
    args = parse_options(__doc__, lines=50_000, line_bytes=3900)
    result = run(args.lines, args.line_bytes)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "upload_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "upload_bench.md")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
