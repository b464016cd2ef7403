"""A child process of the local stack: its own session, its own log file, a clean stop.

Each child runs in a new session (so a Ctrl-C typed at the terminal reaches only the stack
launcher, which then stops the children in order) and, on Linux, asks the kernel to send it
SIGTERM if the launcher dies, so a killed launcher does not leave orphans behind. Stopping
signals the child's whole process group, which also reaches what the child started itself
(Celery's embedded beat process).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """One started child; :meth:`stop` ends it and every process in its group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def restart(self) -> None:
        """Start the same command again (after it exited), appending to the same log."""
        assert self.exit_code() is not None, "restart only a child that has exited"
        self._signal_group(signal.SIGKILL)  # what it started itself must not linger
        self._popen = self._spawn()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        """The leader's handle (``poll()``, ``returncode``), for callers that watch it."""
        return self._popen

    def exit_code(self) -> int | None:
        """None while running, else the exit status (negative: killed by that signal)."""
        return self._popen.poll()

    def log_tail(self, num_lines: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-num_lines:])

    def stop(self, timeout_s: float = 15.0, kill_timeout_s: float = 10.0) -> int | None:
        """SIGTERM the group, wait ``timeout_s``, then SIGKILL what is left and wait
        ``kill_timeout_s``; returns the exit status, None if the leader outlived even that.

        Every wait is bounded, so a caller stopping several children always gets through
        them all: a process in uninterruptible sleep (a hung disk or device driver) does not
        die of SIGKILL until the kernel call returns, and that must not hang the caller.
        """
        self._signal_group(signal.SIGTERM)
        code = self._wait(timeout_s)
        if code is None:
            self._signal_group(signal.SIGKILL)
            code = self._wait(kill_timeout_s)
        # The leader may exit before its group (beat outlives the worker by a moment).
        self._signal_group(signal.SIGKILL)
        return code

    def kill(self, timeout_s: float = 30.0) -> int:
        """SIGKILL the whole group, as a crash would; returns the exit status."""
        self._signal_group(signal.SIGKILL)
        return self._popen.wait(timeout=timeout_s)

    def _wait(self, timeout_s: float) -> int | None:
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)
