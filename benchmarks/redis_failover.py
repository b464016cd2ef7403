"""The Redis master SIGKILLed mid-batch behind Sentinel, every worker setting at its default.

    python -m benchmarks.redis_failover

Starts one master and one replica (AOF on) and three sentinels on loopback
(infra/harness/sentinel.py: master declared down after 1 s), the API in a thread and
one ``kvbatch worker`` process, both on the ``sentinel://`` URL, and a batch of ``--lines``
chat lines in shards of 16. Once the worker's engine has requests in flight the master is
SIGKILLed. Writes ``benchmarks/results/redis_failover.json``: seconds from the kill to the
replica's promotion and to the batch's end, its status, whether every custom_id came back
once, how many shards the watchdog had to send again, and whether the worker survived
the failover (when it does not, it is started again, as an orchestrator would).

The model is a tiny random-weight Llama with SmolLM2's tokenizer (tests/tiny_models.py).
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import parse_options, write_result
from benchmarks.worker_recovery import MODELS, wait_for
from engine.model_fetch import fetch_model
from infra.harness.batches import chat_line, create_chat_batch, result_lines, wait_batch
from infra.harness.sentinel import SentinelGroup
from infra.harness.service import make_settings
from infra.harness.stack import running_stack
from infra.harness.tiny_models import build_tiny_chat_model
from infra.harness.workers import worker_stats
from jobs.connections import redis_client


def run(num_lines: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kvbatch-failover-"))
    model = build_tiny_chat_model(tmp / "model", fetch_model("smollm2-135m-instruct", MODELS))
    group = SentinelGroup(tmp / "sentinel")
    group.start()
    client: Any = redis_client(group.url, SentinelGroup.MASTER, decode_responses=True)
    settings = make_settings("local", "kvbatch-bench-failover", tmp, None, shard_size=16)
    settings = settings.updated(redis_url=group.url)
    worker_settings: dict[str, object] = {"beat_schedule_path": tmp / "beat-schedule"}
    worker_settings["worker_model"] = model
    lines = [
        chat_line(f"f-{i}", f"Tell me about {i}.", max_tokens=32, ignore_eos=True)
        for i in range(num_lines)
    ]
    log_tail = ""
    try:
        with running_stack(settings, client, tmp, worker_settings) as stack:
            worker = stack.start_worker(concurrency=None)
            api = stack.client()
            batch_id = create_chat_batch(api, lines)
            prefix = settings.redis.key_prefix
            wait_for(
                "requests in flight",
                lambda: worker_stats(client, prefix, worker.name).get("num_submitted", 0) > 0,
                timeout_s=300,
            )
            group.master.stop(signal.SIGKILL)
            killed = time.monotonic()
            promoted = wait_for(
                "promotion", lambda: group.master_port() == group.replica.port, 120, 0.1
            )
            time.sleep(5)
            alive = worker.process.poll() is None
            if not alive:  # what an orchestrator does: start it again
                log_tail = worker.log_tail(3000)
                stack.start_worker(concurrency=None)
            batch = wait_batch(api, batch_id, {"completed", "failed"}, timeout_s=1800)
            ended = time.monotonic()
            outputs, errors = result_lines(api, batch)
            resends = client.hgetall(f"{prefix}:shard_resends:{batch_id}")
    finally:
        group.stop()
    seen = Counter(line["custom_id"] for line in outputs + errors)
    return {
        "settings": "kvbatch worker defaults; sentinel down-after-milliseconds 1000",
        "model": "tiny random-weight Llama, SmolLM2 tokenizer",
        "num_lines": num_lines,
        "shard_size": 16,
        "promoted_after_kill_s": round(promoted - killed, 1),
        "batch_done_after_kill_s": round(ended - killed, 1),
        "status": batch.status,
        "each_custom_id_once": seen == Counter(line["custom_id"] for line in lines),
        "num_errors": len(errors),
        "shards_resent_by_watchdog": sum(int(v) for v in resends.values()),
        "worker_survived": alive,
        "worker_restarted": not alive,
        "worker_exit": "" if alive else _critical_line(log_tail),
    }


def _critical_line(log_tail: str) -> str:
    """The worker's own account of why it stopped (Celery logs it as CRITICAL)."""
    lines = [line for line in log_tail.splitlines() if "CRITICAL" in line]
    return lines[-1][-300:] if lines else log_tail[-300:]


def main() -> None:
    args = parse_options(__doc__, lines=128)
    result = run(args.lines)
    print(result)
    write_result("redis_failover", result)


if __name__ == "__main__":
    main()
