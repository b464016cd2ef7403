"""The restart policy on real child processes, with a clock the test moves."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

from rich.console import Console

from infra.harness.process import ManagedProcess
from infra.supervision import RestartPolicy, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_exit(process: ManagedProcess) -> None:
    deadline = time.monotonic() + 10
    while process.exit_code() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_dead_child_restarts_with_doubling_delays_reset_by_a_healthy_run(tmp_path: Path) -> None:
    out = io.StringIO()
    crashing = ManagedProcess("crasher", [sys.executable, "-c", "exit(3)"], tmp_path / "c.log")
    clock = Clock()
    policy = RestartPolicy(first_delay_s=1, max_delay_s=4, healthy_after_s=10)
    supervisor = Supervisor([crashing], Console(file=out, width=400), policy, clock)
    pids = [crashing.pid]
    for delay in (1, 2, 4, 4):
        wait_exit(crashing)
        supervisor.check()
        assert f"exited with status 3; restarting in {delay}s" in out.getvalue()
        clock.now += delay - 0.5
        supervisor.check()
        assert crashing.pid == pids[-1], "not before its delay"
        clock.now += 0.5
        supervisor.check()
        assert crashing.pid != pids[-1], "restarted once the delay is up"
        pids.append(crashing.pid)
    wait_exit(crashing)
    steady = ManagedProcess(
        "steady", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log"
    )
    try:
        supervisor = Supervisor([steady], Console(file=out, width=400), policy, clock)
        supervisor.check()
        clock.now += 11
        supervisor.check()  # ran longer than healthy_after_s: the backoff starts over
        steady.stop(timeout_s=5)
        supervisor.check()
        last = out.getvalue().splitlines()[-1]
        assert "steady" in last and "restarting in 1s" in last, last
    finally:
        steady.stop(timeout_s=5)
