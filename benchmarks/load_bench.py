"""Load on the API while a batch runs: concurrent clients poll the batch and list files.

    python -m benchmarks.load_bench --clients 100 --duration 20 --interval 0.5
    python -m benchmarks.load_bench --interval 0 --name load_bench_saturation

Starts its own stack on this machine (the API as a child process, one worker process, the
local Redis under a private key prefix, local storage), submits a batch, and while the
worker runs it, ``--clients`` asyncio clients (one aiohttp connection each) alternate
``GET /v1/batches/{id}`` and ``GET /v1/files``, ``--interval`` seconds apart (0: as fast as
the API answers, which measures its saturation rather than a poller's latency). Writes
``benchmarks/results/load_bench.json``: error rate and latency percentiles.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import write_result
from infra.harness.load import run_bench
from infra.harness.service import SMOLLM2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--lines", type=int, default=256)
    parser.add_argument("--name", default="load_bench", help="results/<name>.json")
    parser.add_argument("--model", type=Path, default=SMOLLM2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_bench(
            args.model, args.clients, args.duration, args.interval, args.lines, Path(tmp)
        )
    result["target_p99_ms"] = 50
    path = write_result(args.name, result)
    print(path.read_text())


if __name__ == "__main__":
    main()
