"""Keeping the local stack's children alive: a child that dies is started again.

A worker SIGKILLed (by hand, or by the kernel's OOM killer) or an API that crashed should not
take the whole ``kvbatch up`` down with it. Each child has its own backoff, so one that dies
at once on every start is retried ever more slowly rather than in a tight loop:

    dies ─► wait delay ─► restart ─► runs ≥ healthy_after_s? ─► delay back to first_delay_s
                 ▲                          │ no: dies again
                 └──── delay × 2 (≤ max) ◄──┘
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console

from infra.harness.process import ManagedProcess


@dataclass(slots=True, frozen=True)
class RestartPolicy:
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    healthy_after_s: float = 60.0  # a run this long resets the backoff


@dataclass(slots=True)
class _ChildState:
    delay_s: float
    started_at: float
    restart_at: float | None = None  # set while the child is dead and waiting
    restarts: int = 0


class Supervisor:
    """Call :meth:`check` periodically; it restarts dead children when their delay is up."""

    def __init__(
        self,
        processes: Sequence[ManagedProcess],
        console: Console,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.processes = processes  # the stack's live list: stopped children leave it
        self.console = console
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._states: dict[int, _ChildState] = {}

    def check(self) -> None:
        now = self._clock()
        for process in list(self.processes):
            state = self._states.setdefault(
                id(process), _ChildState(self.policy.first_delay_s, now)
            )
            code = process.exit_code()
            if code is None:
                if now - state.started_at >= self.policy.healthy_after_s:
                    state.delay_s = self.policy.first_delay_s
                continue
            if state.restart_at is None:
                state.restart_at = now + state.delay_s
                self.console.print(
                    f"[yellow]{process.name} (pid {process.pid}) exited with status {code}; "
                    f"restarting in {state.delay_s:g}s[/yellow] (log {process.log_path})"
                )
            elif now >= state.restart_at:
                process.restart()
                state.restarts += 1
                state.started_at, state.restart_at = now, None
                state.delay_s = min(state.delay_s * 2, self.policy.max_delay_s)
                self.console.print(
                    f"restarted {process.name} (pid {process.pid}, restart {state.restarts})"
                )
