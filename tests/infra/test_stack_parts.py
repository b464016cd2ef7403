"""The pieces of the local stack on their own: Redis URLs and ports, child processes, the
sample batch."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from infra.harness.process import ManagedProcess
from infra.harness.redis_server import (
    free_port,
    own_redis_port,
    port_is_free,
    redis_answers,
    with_port,
)
from infra.sample_batch import BATCH_FILE, chat_batch_lines, read_prompts, to_jsonl
from jobs.wire.lines import parse_input_line


def test_with_port_keeps_database_and_password() -> None:
    assert with_port("redis://127.0.0.1:6379/3", 7001) == "redis://127.0.0.1:7001/3"
    assert with_port("redis://:pw@localhost/0", 7002) == "redis://:pw@127.0.0.1:7002/0"


def test_own_redis_port_prefers_the_configured_free_loopback_port() -> None:
    port = free_port()
    assert own_redis_port(f"redis://127.0.0.1:{port}/0") == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert not port_is_free(busy)
        other = own_redis_port(f"redis://127.0.0.1:{busy}/0")
        assert other != busy and port_is_free(other)
    # A remote host's port is not ours to take, free here or not.
    assert own_redis_port(f"redis://redis.example.internal:{port}/0") != port


def test_redis_answers_only_where_redis_listens() -> None:
    assert redis_answers("redis://127.0.0.1:6379/0")
    assert not redis_answers(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)


def test_stop_ends_the_child_and_its_group(tmp_path: Path) -> None:
    """A child that starts its own child (as a worker starts beat): both are gone."""
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = ManagedProcess("sleeper", [sys.executable, "-c", script], tmp_path / "s.log")
    deadline = time.monotonic() + 10
    while "started" not in process.log_tail():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    assert len(family) == 2
    process.stop(timeout_s=5)
    _, alive = psutil.wait_procs(family, timeout=5)
    assert not alive
    assert process.exit_code() is not None


def test_sample_batch_file_matches_the_prompts() -> None:
    """``samples/chat_batch.jsonl`` is regenerated from the prompts, never edited by hand."""
    prompts = read_prompts()
    assert len(prompts) >= 4
    assert BATCH_FILE.read_bytes() == to_jsonl(chat_batch_lines(prompts))
    for raw in BATCH_FILE.read_bytes().splitlines():
        line = parse_input_line(raw)
        assert line.url == "/v1/chat/completions"


@pytest.mark.parametrize("max_tokens", [1, 64])
def test_chat_batch_lines_are_valid_requests(max_tokens: int) -> None:
    lines = chat_batch_lines(["a", "b"], "some-model", max_tokens)
    assert [line["custom_id"] for line in lines] == ["prompt-0", "prompt-1"]
    assert all(line["body"]["max_tokens"] == max_tokens for line in lines)
