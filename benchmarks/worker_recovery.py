"""A worker SIGKILLed near the end of a shard, every worker setting at its default.

    python -m benchmarks.worker_recovery

Starts its own stack on this machine (the API in a thread, two worker processes with the
settings ``kvbatch worker`` ships: visibility timeout 1 h, lease 30 s, sweep every 15 s,
commits every 8 lines or 2 s; local Redis under a private key prefix; local storage) and
one batch of ``--lines`` chat lines, one default-size shard, of varied lengths (8 to 64
generated tokens, ``ignore_eos``) so that lines finish one after another. The first worker
takes the shard; once the batch's live output tokens reach ``--kill-at`` of the total, it
is SIGKILLed. The second worker, idle until then, must get the shard back from the
watchdog (the broker's visibility timeout is an hour) and run only the lines the dead run
had not committed. Writes ``benchmarks/results/worker_recovery.json``: seconds from the
kill to the first resend, to the rerun's start and to the batch's end; the lines and engine
tokens the rerun computed over the shard's; and whether every custom_id came back once.

The model is a tiny random-weight Llama with SmolLM2's tokenizer (infra/harness/tiny_models.py):
what is measured is recovery, not speed.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import parse_options, write_result
from engine.model_fetch import fetch_model
from infra.harness.batches import chat_line, create_chat_batch, result_lines, wait_batch
from infra.harness.service import REDIS_URL, make_settings
from infra.harness.stack import running_stack
from infra.harness.tiny_models import build_tiny_chat_model
from infra.harness.workers import worker_stats

MODELS = Path(__file__).resolve().parents[1] / "models"


def max_tokens_of(i: int) -> int:
    return 8 + (i * 37) % 57  # 8..64, spread evenly over the shard


def wait_for(what: str, check: Any, timeout_s: float, poll_s: float = 0.05) -> float:
    """Poll ``check`` until it is true; returns the monotonic time it became so."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(poll_s)
    return time.monotonic()


def run(num_lines: int, kill_at: float) -> dict[str, Any]:
    client: Any = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"kvbatch-bench-recovery-{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="kvbatch-recovery-"))
    model = build_tiny_chat_model(tmp / "model", fetch_model("smollm2-135m-instruct", MODELS))
    settings = make_settings("local", prefix, tmp, None, shard_size=256)
    worker_settings: dict[str, object] = {"beat_schedule_path": tmp / "beat-schedule"}
    worker_settings["worker_model"] = model
    lines = [
        chat_line(f"r-{i}", f"Tell me about {i}.", max_tokens=max_tokens_of(i), ignore_eos=True)
        for i in range(num_lines)
    ]
    total_output = sum(max_tokens_of(i) for i in range(num_lines))
    with running_stack(settings, client, tmp, worker_settings) as stack:
        first = stack.start_worker(concurrency=None)
        api = stack.client()
        batch_id = create_chat_batch(api, lines)
        batch_key = f"{settings.redis.key_prefix}:batch:{batch_id}"
        wait_for(
            "output tokens",
            lambda: int(client.hget(batch_key, "output_tokens") or 0) >= kill_at * total_output,
            timeout_s=900,
            poll_s=0.02,
        )
        first.kill()
        killed = time.monotonic()
        done_at_kill = int(client.hget(batch_key, "output_tokens") or 0)
        second = stack.start_worker(concurrency=None)  # loads while the lease runs out
        resends_key = f"{settings.redis.key_prefix}:shard_resends:{batch_id}"
        deliveries_key = f"{settings.redis.key_prefix}:shard_deliveries:{batch_id}"
        resent = wait_for("resend", lambda: client.hlen(resends_key) > 0, 600, 0.2)
        rerun = wait_for(
            "rerun",  # a second start, or the batch already ended (its bookkeeping gone)
            lambda: (
                int(client.hget(deliveries_key, "0") or 0) > 1
                or client.hget(batch_key, "status") in ("finalizing", "completed", "failed")
            ),
            600,
        )
        batch = wait_batch(api, batch_id, {"completed", "failed"}, timeout_s=900)
        ended = time.monotonic()
        time.sleep(3)  # the second worker's last stats (published every 2 s)
        stats = worker_stats(client, settings.redis.key_prefix, second.name)
        outputs, errors = result_lines(api, batch)
    seen = Counter(line["custom_id"] for line in outputs + errors)
    usage = batch.usage
    assert usage is not None
    shard_tokens = usage.input_tokens + usage.output_tokens
    return {
        "settings": "kvbatch worker defaults (KVBATCH_VISIBILITY_TIMEOUT_S 3600, "
        "KVBATCH_SHARD_LEASE_S 30, KVBATCH_EXPIRY_INTERVAL_S 15, "
        "KVBATCH_SHARD_COMMIT_LINES 8, KVBATCH_SHARD_COMMIT_INTERVAL_S 2)",
        "model": "tiny random-weight Llama, SmolLM2 tokenizer",
        "num_lines": num_lines,
        "shard_output_tokens": total_output,
        "killed_at_output_tokens": done_at_kill,
        "killed_at_fraction": round(done_at_kill / total_output, 3),
        "first_resend_after_kill_s": round(resent - killed, 1),
        "rerun_started_after_kill_s": round(rerun - killed, 1),
        "batch_done_after_kill_s": round(ended - killed, 1),
        "status": batch.status,
        "each_custom_id_once": seen == Counter(line["custom_id"] for line in lines),
        "num_errors": len(errors),
        "output_tokens_counted": usage.output_tokens,
        "rerun_lines": int(stats.get("num_submitted", 0)),
        "rerun_engine_tokens": int(stats.get("num_batched_tokens", 0)),
        "shard_tokens": shard_tokens,
        "rerun_token_fraction": round(stats.get("num_batched_tokens", 0) / shard_tokens, 3),
    }


def main() -> None:
    args = parse_options(__doc__, lines=256, kill_at=0.9)
    result = run(args.lines, args.kill_at)
    print(result)
    write_result("worker_recovery", result)


if __name__ == "__main__":
    main()
