"""Running ``kvbatch up`` / ``kvbatch demo`` as real subprocesses, and finding what they
started (by process tree, not by trusting the launcher's own account)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from infra.harness.redis_server import free_port


def isolated_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for a launcher: its own key, queue and broker prefixes on ``redis_url``."""
    prefix = f"kvbatch-infra-test-{secrets.token_hex(4)}"
    return {
        **os.environ,
        "COLUMNS": "200",
        "KVBATCH_REDIS_URL": redis_url,
        "KVBATCH_KEY_PREFIX": prefix,
        "KVBATCH_BROKER_KEY_PREFIX": f"{prefix}:broker:",
        "KVBATCH_SHARD_QUEUE": f"{prefix}.shards",
        "KVBATCH_API_KEYS": "infra-test-key:infra-tenant",
        "KVBATCH_FLOWER_BASIC_AUTH": "admin:infra-test",
        **extra,
    }


def launch(
    args: list[str], env: dict[str, str], log_path: Path, *, sigint_ignored: bool = False
) -> subprocess.Popen[bytes]:
    """``kvbatch ARGS``; ``sigint_ignored`` starts it as a shell starts a background job
    without job control (``kvbatch up &`` in a script): with SIGINT ignored."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignore_sigint if sigint_ignored else None,
        )


def _ignore_sigint() -> None:
    """Runs in the child before exec; an ignored signal stays ignored across exec."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_for_line(
    process: subprocess.Popen[bytes], log_path: Path, text: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"no {text!r} (exit status {process.poll()}):\n{log_path.read_text()[-4000:]}"
            )
        time.sleep(0.25)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def in_sessions(session_ids: set[int]) -> list[psutil.Process]:
    """Live processes in any of these sessions (each child of the stack leads its own)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) in session_ids and process.status() != "zombie":
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def api_and_flower_ports() -> tuple[int, int]:
    return free_port(), free_port()
