"""``kvbatch up`` for real: its own Redis when none answers, readiness, and a clean stop that
ends everything it started and nothing else."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from infra.harness.readiness import ping_workers
from infra.harness.redis_server import free_port, redis_answers
from tests.infra.stack_runner import (
    api_and_flower_ports,
    descendants,
    in_sessions,
    isolated_env,
    launch,
    wait_for_line,
)

READY = "kvbatch is up"


def stop_and_check(
    up: subprocess.Popen[bytes], sig: signal.Signals, family: list[psutil.Process]
) -> None:
    """Signal ``up``; it must exit 0 and leave none of its processes (or their groups)."""
    sessions = {p.pid for p in family}
    up.send_signal(sig)
    assert up.wait(timeout=90) == 0
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"still running: {alive}"
    assert not in_sessions(sessions)


@pytest.mark.slow
def test_up_starts_its_own_redis_and_stops_everything(tmp_path: Path, smollm2_dir: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    assert not redis_answers(redis_url)
    env = isolated_env(redis_url)
    api_port, flower_port = api_and_flower_ports()
    args = ["up", "--port", str(api_port), "--flower-port", str(flower_port)]
    args += ["--var-dir", str(tmp_path / "var"), "--model", str(smollm2_dir)]
    log = tmp_path / "up.log"
    up = launch(args, env, log)
    try:
        wait_for_line(up, log, READY, timeout_s=300)
        family = descendants(up.pid)
        assert {"redis-server"} <= {p.name() for p in family}
        assert redis_answers(redis_url)
        health = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5)
        assert health.status_code == 200
        options = {"global_keyprefix": env["KVBATCH_BROKER_KEY_PREFIX"]}
        assert ping_workers(redis_url, options, timeout_s=3)
        flower = f"http://127.0.0.1:{flower_port}/"
        assert httpx.get(flower, timeout=5).status_code == 401
        assert httpx.get(flower, timeout=5, auth=("admin", "infra-test")).status_code == 200
        stop_and_check(up, signal.SIGINT, family)
    finally:
        if up.poll() is None:
            up.kill()
    assert not redis_answers(redis_url)
    assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()
    assert (tmp_path / "var" / "logs" / "api.log").stat().st_size > 0


@pytest.mark.slow
def test_up_leaves_a_redis_it_did_not_start_alone(tmp_path: Path, smollm2_dir: Path) -> None:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    theirs = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    up: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(redis_url):
            assert theirs.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        api_port, _ = api_and_flower_ports()
        args = ["up", "--port", str(api_port), "--no-flower", "--var-dir", str(tmp_path / "var")]
        log = tmp_path / "up.log"
        up = launch([*args, "--model", str(smollm2_dir)], isolated_env(redis_url), log)
        wait_for_line(up, log, READY, timeout_s=300)
        family = descendants(up.pid)
        assert theirs.pid not in {p.pid for p in family}
        assert "redis-server" not in {p.name() for p in family}
        stop_and_check(up, signal.SIGTERM, family)
        assert theirs.poll() is None and redis_answers(redis_url)
    finally:
        if up is not None and up.poll() is None:
            up.kill()
        theirs.terminate()
        theirs.wait(timeout=10)


def test_up_stops_on_sigint_even_when_started_with_it_ignored(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    """``kvbatch up &`` in a script (or a test run started that way) inherits SIGINT ignored,
    and Python leaves it so: ``up`` must still stop everything, Redis last, on SIGINT."""
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    args = ["up", "--port", str(free_port()), "--no-flower", "--var-dir", str(tmp_path / "var")]
    args += ["--model", str(tiny_model_dirs["llama"])]
    log = tmp_path / "up.log"
    up = launch(args, isolated_env(redis_url), log, sigint_ignored=True)
    try:
        wait_for_line(up, log, READY, timeout_s=300)
        stop_and_check(up, signal.SIGINT, descendants(up.pid))
    finally:
        if up.poll() is None:
            up.kill()
    stopped = [
        line.split()[1] for line in log.read_text().splitlines() if line.startswith("stopped ")
    ]
    assert stopped == ["worker", "api", "redis"]
    assert not redis_answers(redis_url)


def test_up_says_how_to_install_redis_when_it_must_start_one(
    tmp_path: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    """No Redis at the URL and no redis-server on PATH: a clear error, nothing left running."""
    env = isolated_env(f"redis://127.0.0.1:{free_port()}/0", PATH=str(tmp_path / "empty"))
    args = ["up", "--port", str(free_port()), "--var-dir", str(tmp_path / "var")]
    log = tmp_path / "up.log"
    up = launch([*args, "--model", str(tiny_model_dirs["llama"])], env, log)
    assert up.wait(timeout=60) == 1
    assert "apt-get install redis-server" in log.read_text()
    assert not (tmp_path / "var" / "logs" / "api.log").exists()


@pytest.mark.slow
def test_up_restarts_a_worker_that_was_killed(tmp_path: Path, smollm2_dir: Path) -> None:
    """SIGKILL the worker (as the OOM killer would): ``up`` logs it, starts it again after a
    backoff, the new worker answers, and Ctrl-C still stops everything."""
    redis_url = "redis://127.0.0.1:6379/0"
    metrics_port = free_port()
    env = isolated_env(redis_url, KVBATCH_METRICS_PORT=str(metrics_port))
    api_port, _ = api_and_flower_ports()
    args = ["up", "--port", str(api_port), "--no-flower", "--var-dir", str(tmp_path / "var")]
    log = tmp_path / "up.log"
    up = launch([*args, "--model", str(smollm2_dir)], env, log)
    try:
        wait_for_line(up, log, READY, timeout_s=300)
        (worker,) = [
            p for p in psutil.Process(up.pid).children() if "worker" in " ".join(p.cmdline())
        ]
        worker.kill()
        wait_for_line(up, log, "exited with status -9; restarting in 1s", timeout_s=30)
        wait_for_line(up, log, "restarted worker", timeout_s=30)
        options = {"global_keyprefix": env["KVBATCH_BROKER_KEY_PREFIX"]}
        deadline = time.monotonic() + 180
        while not ping_workers(redis_url, options, timeout_s=2):
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        assert up.poll() is None, "up kept running"
        assert httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5).status_code == 200
        engine = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert (
            f'kvbatch_worker_num_steps_total{{device="cpu",model="{smollm2_dir.name}"}}' in engine
        )
        stop_and_check(up, signal.SIGINT, descendants(up.pid))
    finally:
        if up.poll() is None:
            up.kill()


def test_up_turns_worker_metrics_on_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.stack import LocalStack
    from infra.stack_config import WORKER_METRICS_PORT, StackConfig

    monkeypatch.delenv("KVBATCH_METRICS_PORT", raising=False)
    assert LocalStack(StackConfig(var_dir=tmp_path)).env["KVBATCH_METRICS_PORT"] == "9300"
    assert WORKER_METRICS_PORT == 9300
    monkeypatch.setenv("KVBATCH_METRICS_PORT", "9400")
    assert LocalStack(StackConfig(var_dir=tmp_path)).env["KVBATCH_METRICS_PORT"] == "9400"
