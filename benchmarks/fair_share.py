"""Fair share across tenants: how long one tenant's batch takes behind another's backlog.

Tenant A submits 10 batches, then tenant B one batch of the same size; B's time (create to
completed) is compared with B's time alone on the same stack, and the time A's whole backlog
took (its first create to its last batch completed) shows what B's turns cost A. Arms (peers
in the same run):

    fifo           shards straight to the broker (``fair_share_window=0``), engine FIFO
    fair_dispatch  tenants take turns reaching the broker, the engine serves in arrival order
    fair_engine    turns at the broker and in the engine's waiting queue (worker/fair_order.py),
                   and tenants' shares of each step (EngineConfig.fair_step_rows): the defaults
    whole_steps    fair_engine, but every running request in every step (fair_step_rows=0)

Tiny work per line (SmolLM2-135M, a few tokens). The window and the engine's size are the
deployment defaults (``FairShareSettings``, ``EngineConfig``) unless ``--fair-window`` or
``--max-num-seqs`` set them: fair share has to work with the settings that ship.

    python -m benchmarks.fair_share [--rounds 2] [--lines 8] [--max-tokens 6] [--max-num-seqs 0]
        [--fair-window N] [--arms whole_steps,fair_engine] [--name fair_share]

Arms alternate within each round; each arm runs on its own stack (the window is a service
setting, the engine order a worker setting). Results: ``benchmarks/results/<name>.json``,
with the load average before and after each arm (other work on the machine skews both).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from moto.server import ThreadedMotoServer
from openai import OpenAI

from benchmarks.common import write_result
from engine.config import EngineConfig
from infra.harness.batches import chat_line, create_chat_batch
from infra.harness.redis_server import free_port
from infra.harness.service import MODEL, REDIS_URL
from infra.harness.stack import Stack, open_stack
from jobs.pipeline.fair_share import FairShareSettings

BACKLOG_BATCHES = 10
ARMS = {  # arm -> (fair share on, fair_engine_order, step shares); the window is --fair-window
    "fifo": (False, False, False),
    "fair_dispatch": (True, False, False),
    "whole_steps": (True, True, False),
    "fair_engine": (True, True, True),
}
SHAPE = {"lines": 8, "max_tokens": 6}  # of every batch; set from the command line


def create(client: OpenAI, tag: str) -> str:
    lines = [
        chat_line(f"{tag}-{i}", f"Say {i}.", max_tokens=SHAPE["max_tokens"])
        for i in range(SHAPE["lines"])
    ]
    return create_chat_batch(client, lines)


def wait_done(client: OpenAI, batch_id: str) -> None:
    while client.batches.retrieve(batch_id).status not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)


def timed(client: OpenAI, tag: str) -> float:
    start = time.monotonic()
    wait_done(client, create(client, tag))
    return time.monotonic() - start


def one_arm(stack: Stack) -> dict[str, Any]:
    a = stack.server.client("key-alpha")
    b = stack.server.client("key-beta")
    timed(b, "warm")
    alone = timed(b, "alone")
    a_start = time.monotonic()
    backlog = [create(a, f"a{n}") for n in range(BACKLOG_BATCHES)]
    shared = timed(b, "shared")
    a_done = sum(a.batches.retrieve(i).status == "completed" for i in backlog)
    for batch_id in backlog:  # what B's turns cost A: its whole backlog's time
        wait_done(a, batch_id)
    return {
        "alone_s": alone,
        "shared_s": shared,
        "ratio": shared / alone,
        "a_done": a_done,
        "a_backlog_s": time.monotonic() - a_start,
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lines", type=int, default=8, help="lines per batch")
    parser.add_argument("--max-tokens", type=int, default=6)
    parser.add_argument(
        "--max-num-seqs", type=int, default=0, help="the worker's engine (0: the engine's default)"
    )
    parser.add_argument(
        "--fair-window",
        type=int,
        default=FairShareSettings().fair_share_window,
        help="the fair arms' window (default: the settings' default)",
    )
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    parser.add_argument("--name", default="fair_share", help="the results file's name")
    args = parser.parse_args()
    arms: dict[str, tuple[int, bool, bool]] = {}
    for arm in args.arms.split(","):
        if arm not in ARMS:
            parser.error(f"unknown arm {arm!r}; the arms are {', '.join(ARMS)}")
        fair, engine_order, step_shares = ARMS[arm]
        arms[arm] = (args.fair_window if fair else 0, engine_order, step_shares)
    SHAPE.update(lines=args.lines, max_tokens=args.max_tokens)
    settings: dict[str, object] = {"shard_size": max(1, args.lines // 2)}
    worker: dict[str, object] = {"visibility_timeout_s": 600}
    if args.max_num_seqs:
        worker["engine_max_num_seqs"] = args.max_num_seqs
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    s3_url = f"http://127.0.0.1:{port}"
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    prefix = f"kvbatch-bench-fair-{secrets.token_hex(3)}"
    try:
        for _ in range(args.rounds):
            for arm, (window, engine_order, step_shares) in arms.items():
                load_before = load_average()
                # Off: every running request in every step; on: the engine's default.
                shares = {} if step_shares else {"engine_fair_step_rows": 0}
                with (
                    tempfile.TemporaryDirectory() as tmp,
                    open_stack(
                        f"{prefix}:{arm}{len(runs[arm])}",
                        Path(tmp),
                        s3_url,
                        client,
                        {**settings, "fair_share_window": window},
                        **worker,
                        **shares,
                        fair_engine_order=engine_order,
                    ) as stack,
                ):
                    stack.start_worker(concurrency=None)
                    run = one_arm(stack)
                runs[arm].append({**run, "load_before": load_before, "load_after": load_average()})
                print(arm, runs[arm][-1], flush=True)
    finally:
        moto.stop()
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    summary = {arm: statistics.median(r["ratio"] for r in rs) for arm, rs in runs.items()}
    path = write_result(
        args.name,
        {
            "setup": {
                **SHAPE,
                "backlog_batches": BACKLOG_BATCHES,
                "settings": settings,
                "worker": worker,
                "engine_max_num_seqs": args.max_num_seqs or EngineConfig(MODEL).max_num_seqs,
                "engine_fair_step_rows": EngineConfig(MODEL, device="cpu").step_row_floor,
                "arms": {
                    arm: {"fair_share_window": w, "fair_engine_order": e, "step_shares": s}
                    for arm, (w, e, s) in arms.items()
                },
            },
            "runs": runs,
            "median_ratio_shared_over_alone": summary,
        },
    )
    print(summary, path)


if __name__ == "__main__":
    main()
