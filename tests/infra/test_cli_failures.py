"""What a user meets when something is missing: one line saying what to do, a non-zero exit,
no traceback (``kvbatch --debug`` shows it); ``--version``; help texts a person can read."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cli import build_parser
from infra.harness.redis_server import free_port, port_is_free
from infra.harness.service import REPO
from tests.infra.test_cli import SUBCOMMANDS


def kvbatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_serve_without_redis_says_so_in_one_line() -> None:
    env = {"KVBATCH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    assert_one_line(kvbatch("serve", "--port", str(free_port()), env=env), "Redis", "redis-server")
    debug = kvbatch("--debug", "serve", "--port", str(free_port()), env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_worker_with_a_model_dir_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert_one_line(kvbatch("worker", "--model", str(tmp_path)), "no *.safetensors", "fetch-model")


def test_run_batch_with_a_missing_input(tmp_path: Path) -> None:
    result = kvbatch(
        "run-batch", "-i", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "out.jsonl"),
        "--model", str(tmp_path),
    )  # fmt: skip
    assert_one_line(result, "nope.jsonl", "does not exist")


def test_run_batch_never_creates_the_output_folder(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    target = tmp_path / "missing" / "out.jsonl"
    result = kvbatch("run-batch", "-i", str(source), "-o", str(target), "--model", str(tmp_path))
    assert_one_line(result, "missing", "create it first")
    assert not target.parent.exists()
    errors = tmp_path / "gone" / "errors.jsonl"  # nor the error file's
    result = kvbatch(
        "run-batch", "-i", str(source), "-o", str(tmp_path / "out.jsonl"),
        "--errors", str(errors), "--model", str(tmp_path),
    )  # fmt: skip
    assert_one_line(result, "gone", "create it first")
    assert not errors.parent.exists()


def test_version() -> None:
    result = kvbatch("--version")
    assert result.returncode == 0 and result.stdout.strip() == "kvbatch 0.1.0"


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_texts_hold_no_raw_restructuredtext(command: str | None) -> None:
    parser = build_parser()
    if command is not None:
        (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[command]
    text = parser.format_help()
    for markup in ("``", ":func:", ":mod:", ":class:"):
        assert markup not in text, text


def test_up_help_shows_every_default_port() -> None:
    text = kvbatch("up", "--help").stdout
    for port in ("8000", "5555", "6379", "9300"):
        assert port in text, text


def test_a_port_in_time_wait_counts_as_free() -> None:
    """A stack stopped a moment ago leaves TIME_WAIT sockets; ``up`` binds as servers do."""
    import socket

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    assert port_is_free(port)
