"""Where the CPU goes while ``LLM.chat`` and the service run the same requests.

The service arm of ``engine_full.py`` ran ~6 % slower than the offline arm although its
engine ran the same steps. This splits each arm into the engine's phase seconds (the
offline engine's own stats, the worker's published ``time_*``) and the CPU seconds, minor
faults and voluntary context switches of every thread of the benchmark process (offline
engine, API, moto, poller), the worker (engine thread, its OpenMP thread, stats, stop
watcher, shard thread, Celery) and Redis, read from ``/proc`` before and after each arm,
plus the whole machine's busy seconds (other sessions included).

On a 2-core machine the engine's two torch threads run in lockstep: a core taken by
anything else for x seconds stalls both, so ``forward_s`` grows by about the CPU seconds
the rest of the machine used during the arm. Compare that with the listed threads.

Usage: python -m benchmarks.cpu_accounting --requests 256 --max-tokens 32 --rounds 2
(Linux only; run it at ``nice -n -20`` on a shared machine.)
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import parse_options
from benchmarks.engine_full import DEFAULT_SHARD_SIZE, WorkerStats, prompts, worker
from benchmarks.service_vs_offline import lines, run_offline, run_service
from engine import LLM, SamplingParams
from engine.stats import StepTimes
from infra.harness.service import SMOLLM2, PrivateStack, run_server
from infra.harness.workers import service_env

TICK = os.sysconf("SC_CLK_TCK")
PHASES = ["schedule_s", "prepare_s", "forward_s", "sample_s", "postprocess_s"]


@dataclass(slots=True, frozen=True)
class ThreadUse:
    comm: str
    cpu_s: float  # user + system
    sys_s: float
    minflt: int
    vcsw: int  # voluntary context switches: a spinning OpenMP thread makes few


Snapshot = dict[str, dict[int, ThreadUse]]


def thread_use(pid: int) -> dict[int, ThreadUse]:
    """Every thread of ``pid`` from ``/proc/PID/task/*/stat`` and ``status``."""
    out: dict[int, ThreadUse] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
        vcsw = next(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith("voluntary_ctxt_switches")
        )
        utime, stime = int(fields[11]) / TICK, int(fields[12]) / TICK
        out[int(task.name)] = ThreadUse(comm, utime + stime, stime, int(fields[7]), vcsw)
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent outside idle and iowait since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK


def snapshot(pids: dict[str, int]) -> tuple[Snapshot, float]:
    return {name: thread_use(pid) for name, pid in pids.items()}, machine_busy_s()


def report(label: str, wall_s: float, before: tuple[Snapshot, float], after: Snapshot) -> None:
    (threads_before, busy_before), busy_after = before, machine_busy_s()
    listed = 0.0
    print(f"--- {label}: wall {wall_s:.2f} s, machine busy {busy_after - busy_before:.2f} cpu-s")
    for name, threads in after.items():
        total, rows = 0.0, []
        for tid, use in threads.items():
            old = threads_before.get(name, {}).get(tid, ThreadUse(use.comm, 0.0, 0.0, 0, 0))
            used = use.cpu_s - old.cpu_s
            total += used
            if used >= 0.05:
                rows.append(
                    f"{tid}={used:.2f} (sys {use.sys_s - old.sys_s:.2f}, "
                    f"flt {use.minflt - old.minflt}, vcsw {use.vcsw - old.vcsw})"
                )
        listed += total
        print(f"  {name}: {total:.2f} cpu-s  {' '.join(rows)}")
    print(f"  everything else on the machine: {busy_after - busy_before - listed:.2f} cpu-s")


def phases(times: StepTimes) -> dict[str, float]:
    return {p: getattr(times, p) for p in PHASES}


def redis_pid() -> int:
    found = subprocess.run(["pgrep", "-o", "redis-server"], capture_output=True, text=True)
    return int(found.stdout.split()[0])


def main() -> None:
    args = parse_options(
        __doc__, requests=256, max_tokens=32, rounds=2, poll_s=0.2, stats_interval_s=0.25
    )
    n, mt = args.requests, args.max_tokens
    llm = LLM(model=str(SMOLLM2))
    llm.chat(
        [[{"role": "user", "content": "warm up"}]], SamplingParams(max_tokens=2), use_tqdm=False
    )
    private = PrivateStack.open(shard_size=DEFAULT_SHARD_SIZE)
    base, client = private.settings, private.redis
    key_prefix = base.redis.key_prefix
    env = service_env(
        base, beat_schedule_path=private.tmp / "beat", stats_interval_s=args.stats_interval_s
    )
    try:
        with (
            run_server(base) as server,
            worker(env, f"cpu-{private.prefix}@host", private.tmp, client, key_prefix) as process,
        ):
            api = server.client()
            stats = WorkerStats(client, key_prefix, [f"cpu-{private.prefix}@host"])
            run_service(api, [lines(prompts(8), "warm", 2)], args.poll_s)
            pids = {"benchmark": os.getpid(), "worker": process.process.pid, "redis": redis_pid()}
            for r in range(args.rounds):
                texts = prompts(n)
                engine_before = phases(llm.engine.stats.phase_times)
                before = snapshot(pids)
                wall = run_offline(llm, texts, mt)
                after = snapshot(pids)[0]
                engine_after = phases(llm.engine.stats.phase_times)
                print("offline", {p: round(engine_after[p] - engine_before[p], 2) for p in PHASES})
                report(f"offline round {r}", wall, before, after)
                time.sleep(max(0.6, 2 * args.stats_interval_s))
                published = stats.read()[0]
                before = snapshot(pids)
                wall = run_service(api, [lines(texts, "one", mt)], args.poll_s)
                after = snapshot(pids)[0]
                time.sleep(max(0.6, 2 * args.stats_interval_s))
                now = stats.read()[0]
                delta = {p: round(now[f"time_{p}"] - published[f"time_{p}"], 2) for p in PHASES}
                print("service", delta)
                report(f"service round {r}", wall, before, after)
    finally:
        private.close()


if __name__ == "__main__":
    main()
