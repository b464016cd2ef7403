"""The whole service against the engine alone, on the same requests.

1. Throughput: N chat requests through ``LLM.chat`` in one process, then as one batch
   through the API (uvicorn), Redis, S3 (moto) and one Celery worker process (the clock
   runs from creating the batch to its completion: the upload is not engine work).
   ratio = offline time / service time (target >= 0.95).
2. Sharing: B concurrent batches of M requests against one batch of B*M
   (target: at most 1.1x the time).

Both arms of a comparison run the same prompts, and each measurement runs ``--rounds``
times, alternating the arms, so that a noisy neighbour on a shared machine hits both; the
ratio is of the summed times.
Each run's prompts start with their own one-token salt (``[A]``, ``[B]``, ...): every run
has the same prefix-cache structure (the chat template's first block is shared by all,
the next block by the run's requests only), and no run finds another run's blocks cached.

Usage: python -m benchmarks.service_vs_offline [--requests 64] [--batches 8] [--per-batch 64]
Writes benchmarks/results/<--name>.json (service_vs_offline.json by default).
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import write_result
from engine import LLM, SamplingParams
from infra.harness.batches import chat_line, jsonl
from infra.harness.service import SMOLLM2, PrivateStack, run_server
from infra.harness.workers import WorkerProcess, service_env, wait_worker_ready


def prompts(count: int, salt: str) -> list[str]:
    """``count`` chat prompts; ``salt`` is one letter, a single token in every tokenizer."""
    assert len(salt) == 1 and salt.isalpha()
    return [f"[{salt}] In one sentence, what is item {i}?" for i in range(count)]


def lines(texts: list[str], tag: str, max_tokens: int) -> list[dict[str, Any]]:
    return [
        chat_line(f"{tag}-{i}", text, temperature=0, max_tokens=max_tokens, ignore_eos=True)
        for i, text in enumerate(texts)
    ]


def run_service(client: Any, batches: list[list[dict[str, Any]]], poll_s: float = 1.0) -> float:
    """Seconds from creating the batches to the last one completed.

    The input files are uploaded first and the batches are then created at once, one client
    thread each, as concurrent submitters would: the clock measures how the service runs
    batches side by side, not how long one client takes to upload files one after another.
    """
    files = [
        client.files.create(file=("in.jsonl", jsonl(batch_lines)), purpose="batch")
        for batch_lines in batches
    ]

    def create(file_id: str) -> str:
        created = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return str(created.id)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(files)) as pool:
        ids = set(pool.map(create, [f.id for f in files]))
    wait_all(client, ids, poll_s)
    return time.perf_counter() - start


def wait_all(client: Any, batch_ids: set[str], poll_s: float) -> None:
    """Until every batch has ended, polling them all with one list call per ``poll_s``.

    One call however many batches: the client shares this machine's cores with the
    service, so one batch and eight batches must cost it the same polling work, or the
    sharing ratio would measure the poller. Once a second by default: the finish is seen
    0.5 s late on average (under 1 % of these runs), while polling five times a second
    took a few % of the cores from the engine (real clients poll every 10-60 s).
    """
    deadline = time.monotonic() + 3600
    while True:
        page = client.batches.list(limit=100)
        ended = {b.id: b for b in page.data if b.id in batch_ids and b.status in _ENDED}
        if len(ended) == len(batch_ids):
            failed = [b for b in ended.values() if b.status != "completed"]
            assert not failed, failed
            return
        assert time.monotonic() < deadline, f"batches not done: {batch_ids - set(ended)}"
        time.sleep(poll_s)


_ENDED = {"completed", "failed", "expired", "cancelled"}


def run_offline(llm: LLM, texts: list[str], max_tokens: int) -> float:
    start = time.perf_counter()
    llm.chat(
        [[{"role": "user", "content": t}] for t in texts],
        SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True),
        use_tqdm=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--per-batch", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="service_vs_offline", help="results/<name>.json")
    parser.add_argument("--poll-s", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args()
    salts = iter("ABCDEFGHIJKLMNOPQRSTUVXYZ")  # W is the warm-up's
    total = args.batches * args.per_batch

    llm = LLM(model=str(SMOLLM2))
    llm.chat(
        [[{"role": "user", "content": "warm up"}]], SamplingParams(max_tokens=2), use_tqdm=False
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines

    private = PrivateStack.open(shard_size=max(args.requests, 256))
    tmp, prefix, client_redis, settings = (
        private.tmp,
        private.prefix,
        private.redis,
        private.settings,
    )
    worker = None
    offline: list[float] = []
    service: list[float] = []
    one: list[float] = []
    many: list[float] = []
    try:
        with run_server(settings) as server:
            env = service_env(settings, beat_schedule_path=tmp / "beat")
            worker = WorkerProcess(env, f"bench-{prefix}@host", tmp / "worker.log", args.batches)
            wait_worker_ready(worker, client_redis, settings.redis.key_prefix)
            client = server.client()
            run_service(client, [lines(prompts(4, "W"), "warm", 2)], args.poll_s)
            for _ in range(args.rounds):
                # The engine in this process and the service's run the very same prompts, one
                # after the other (each idles while the other runs; neither has the other's
                # prefix cache).
                texts = prompts(args.requests, next(salts))
                offline.append(run_offline(llm, texts, args.max_tokens))
                batch = [lines(texts, "svc", args.max_tokens)]
                service.append(run_service(client, batch, args.poll_s))
            for _ in range(args.rounds):
                texts = prompts(total, next(salts))
                one.append(run_service(client, [lines(texts, "one", args.max_tokens)], args.poll_s))
                texts = prompts(total, next(salts))
                split = [
                    lines(
                        texts[b * args.per_batch : (b + 1) * args.per_batch],
                        f"b{b}",
                        args.max_tokens,
                    )
                    for b in range(args.batches)
                ]
                many.append(run_service(client, split, args.poll_s))
    finally:
        if worker is not None:
            worker.stop()
        private.close()

    result = {
        "model": SMOLLM2.name,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "poll_s": args.poll_s,
        "throughput": {
            "requests": args.requests,
            "offline_s": [round(t, 2) for t in offline],
            "service_s": [round(t, 2) for t in service],
            "ratio": round(sum(offline) / sum(service), 3),
            "target": ">= 0.95",
        },
        "sharing": {
            "batches": args.batches,
            "per_batch": args.per_batch,
            "one_batch_s": [round(t, 2) for t in one],
            "many_batches_s": [round(t, 2) for t in many],
            "ratio": round(sum(many) / sum(one), 3),
            "target": "<= 1.1",
        },
    }
    print(write_result(args.name, result))
    print(result)


if __name__ == "__main__":
    main()
