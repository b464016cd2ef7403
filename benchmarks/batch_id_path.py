"""Which files of ``jobs/`` and ``worker/`` a batch id passes through, measured, not read.

One small batch goes through a real stack (the API in this process, local storage, one
worker process, SmolLM2). A profile hook in both processes records every call into
``jobs/`` or ``worker/`` whose arguments (or return value, where the id is born) carry the
batch's id: the id itself, a string that contains it (a storage key, a Redis key), or an
object or payload holding it one level down (a record, a task's arguments, a runner holding
its batch). The report lists those files in the order the batch first reaches them, and the
stops: the file-to-file moves of the id's trip, with how many return to a file already left.

Issue 23 asks that this trip cross at most 6 files. Code reached only with a batch's
contents (a line's body, a sampling request) is not on the id's trip and is not counted.

    python -m benchmarks.batch_id_path [--name batch_id_path]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.common import write_result

REPO = Path(__file__).resolve().parents[1]
_ROOTS = tuple(str(REPO / room) + os.sep for room in ("jobs", "worker"))
_ID = re.compile(r"batch_[0-9a-f]{48}")
_HOLDERS = ("id", "batch_id", "batch", "record", "shard", "key", "ref")


def _carries(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is, contains (as text) or holds one attribute down a batch id."""
    if isinstance(value, str):
        return _ID.search(value) is not None
    if depth > 0 or value is None or isinstance(value, (bytes, int, float, bool)):
        return False
    if isinstance(value, (tuple, list)) and len(value) <= 8:
        return any(_carries(v, depth + 1) for v in value)
    if isinstance(value, dict) and len(value) <= 16:
        return any(_carries(v, depth + 1) for v in value.values())
    return any(_carries(getattr(value, name, None), depth + 1) for name in _HOLDERS)


class IdTrace:
    """A profile hook that appends ``{"file", "function"}`` lines to ``path`` for each call
    into the rooms whose arguments carry a batch id (every call, in order, so stops count)."""

    def __init__(self, path: Path):
        self._out = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def install(self) -> None:
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        code = frame.f_code
        if not code.co_filename.startswith(_ROOTS):
            return
        if event == "return":  # where the id is born (or first handed back)
            if not _carries(arg):
                return
        else:
            names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
            local = frame.f_locals
            if not any(_carries(local.get(n)) for n in names):
                return
        line = {"file": str(Path(code.co_filename).relative_to(REPO)), "function": code.co_name}
        with self._lock:
            self._out.write(json.dumps(line) + "\n")


def summarize(lines: list[dict[str, str]]) -> dict[str, Any]:
    """Files in first-reached order, stops (moves between files) and returns to a left file."""
    files: list[str] = []
    stops = returns = 0
    last: str | None = None
    for line in lines:
        file = line["file"]
        if file == last:
            continue
        stops += 1
        if file in files:
            returns += 1
        else:
            files.append(file)
        last = file
    return {"files": files, "num_files": len(files), "stops": stops, "returns": returns}


def _run_worker(trace_path: Path, celery_argv: list[str]) -> None:
    """The worker child: the hook first, then Celery's own command line."""
    IdTrace(trace_path).install()
    from celery.bin.celery import main

    sys.argv = ["celery", *celery_argv]
    main()


class _TracedWorker:
    """A worker started through :func:`_run_worker`, shaped for ``wait_worker_ready``."""

    def __init__(self, env: dict[str, str], tmp: Path, trace: Path):
        from infra.harness.process import ManagedProcess
        from infra.harness.workers import worker_argv

        self.name = "idpath@local"
        self.log_path = tmp / "worker.log"
        celery_argv = worker_argv(env, self.name, concurrency=4)[3:]  # after "python -m celery"
        argv = [sys.executable, "-m", "benchmarks.batch_id_path", "--worker", str(trace)]
        self._managed = ManagedProcess(self.name, argv + celery_argv, self.log_path, env, REPO)

    @property
    def process(self) -> Any:
        return self._managed.popen

    def log_tail(self, num_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]

    def stop(self) -> None:
        self._managed.stop(timeout_s=60)


def _batch_lines(model: str) -> bytes:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"Say {i}."}],
                "max_tokens": 3,
            },
        }
        for i in range(3)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _run() -> dict[str, Any]:
    import redis

    from infra.harness.service import MODEL, make_settings, run_server
    from infra.harness.workers import service_env, wait_worker_ready

    tmp = Path(tempfile.mkdtemp(prefix="kvbatch-idpath-"))
    api_trace, worker_trace = tmp / "api.jsonl", tmp / "worker.jsonl"
    settings = make_settings("local", f"kvbatch-idpath-{os.getpid()}", tmp, None)
    client = redis.Redis.from_url(settings.redis.redis_url, decode_responses=True)
    worker = _TracedWorker(service_env(settings), tmp, worker_trace)
    try:
        wait_worker_ready(worker, client, settings.redis.key_prefix)  # type: ignore[arg-type]
        IdTrace(api_trace).install()
        with run_server(settings) as server:
            sdk = server.client()
            file = sdk.files.create(file=("in.jsonl", _batch_lines(MODEL)), purpose="batch")
            batch = sdk.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 300
            while batch.status not in ("completed", "failed", "cancelled", "expired"):
                assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
                time.sleep(0.5)
                batch = sdk.batches.retrieve(batch.id)
            assert batch.status == "completed" and batch.output_file_id, batch
            output = sdk.files.content(batch.output_file_id).text
            assert len(output.splitlines()) == 3, output
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        worker.stop()
        for key in client.scan_iter(match=f"kvbatch-idpath-{os.getpid()}*", count=1000):
            client.delete(key)
    api_lines = [json.loads(x) for x in api_trace.read_text().splitlines()]
    worker_lines = [json.loads(x) for x in worker_trace.read_text().splitlines()]
    return {
        "batch": "3 chat lines, max_tokens 3, SmolLM2, local storage, one worker (4 threads)",
        "api_process": summarize(api_lines),
        "worker_process": summarize(worker_lines),
        "whole_trip": summarize(api_lines + worker_lines),
        "calls": sorted({f"{x['file']}:{x['function']}" for x in api_lines + worker_lines}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="batch_id_path")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker is not None:
        _run_worker(args.worker, rest)
        return
    report = _run()
    print(write_result(args.name, report))
    for part in ("api_process", "worker_process", "whole_trip"):
        print(part, report[part]["num_files"], "files", report[part]["stops"], "stops")
        for file in report[part]["files"]:
            print("   ", file)


if __name__ == "__main__":
    main()
