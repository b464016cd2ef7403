"""Compile every Triton kernel the engine launches for sm_80 and sm_90, on a machine without a GPU.

Triton compiles ahead of time anywhere. This module calls each kernel family's real launcher
(``kernels.*_triton``) on small CPU tensors laid out as the engine passes them, and turns the
launch (``kernel[grid](...)``) into a compile for a chosen ``GPUTarget``: Triton's own runtime
binds the arguments, so the signature, the divisibility specialization, the constexprs and
``num_warps`` are exactly those of the same launch on a GPU, and no number is copied here.

Each compiled kernel reports the shared memory it needs (Triton's dynamic allocation plus
ptxas's static one) and ptxas's registers, stack frame and spills, read from the cubin. Run as
``python -m tests.kernels.compile_gate`` (one JSON line per launch); ``test_hopper_compile.py``
runs it in a subprocess, since pytest's own process interprets Triton (``TRITON_INTERPRET=1``
is set before ``kernels`` is imported) and can compile nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver
from triton.runtime.jit import KernelInterface

from tests.kernels.compile_cases import Case, all_cases


@dataclass(frozen=True, slots=True)
class Target:
    arch: int  # compute capability, major * 10 + minor
    max_shared_bytes: int  # cudaDevAttrMaxSharedMemoryPerBlockOptin


# CUDA C Programming Guide, "Technical Specifications per Compute Capability".
TARGETS = (Target(80, 163 * 1024), Target(90, 227 * 1024))


@dataclass(frozen=True, slots=True)
class CompiledLaunch:
    """What one launch of a case compiled to on one target (or why it did not)."""

    family: str
    case: str
    arch: int
    kernel: str = ""
    hash: str = ""  # Triton's cache key: equal hashes are the same binary
    num_warps: int = 0
    shared_bytes: int = 0  # dynamic (Triton's allocation) + static (ptxas)
    registers: int = 0
    stack_bytes: int = 0  # ptxas's stack frame: spills and local arrays live there
    spill_bytes: int | None = None  # ptxas -v spill stores + loads; None on a cache hit
    error: str | None = None


class _AheadOfTimeDriver(DriverBase):
    """Answers Triton's runtime with a fixed target instead of a GPU; it never launches."""

    def __init__(self, arch: int) -> None:
        self.arch = arch

    @classmethod
    def is_active(cls) -> bool:
        return False

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("ahead-of-time compiles build no launcher")

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self) -> Any:
        raise NotImplementedError("ahead-of-time compiles run nothing")

    def get_current_device(self) -> int:
        return self.arch  # Triton keys its in-memory kernel cache by device: one per target

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@contextlib.contextmanager
def _compile_instead_of_launch(arch: int) -> Iterator[list[Any]]:
    """Inside, ``kernel[grid](...)`` compiles for ``arch`` (``run(warmup=True)``, Triton's own
    compile-only path) and appends the ``CompiledKernel``; nothing is launched. The driver
    stays set afterwards: the worker processes that call this do nothing else."""
    compiled: list[Any] = []

    def compile_only(kernel: Any, grid: Any) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            compiled.append(kernel.run(*args, grid=grid, warmup=True, **kwargs))

        return launch

    driver.set_active(_AheadOfTimeDriver(arch))
    previous = KernelInterface.__getitem__
    KernelInterface.__getitem__ = compile_only  # type: ignore[method-assign,assignment]
    try:
        yield compiled
    finally:
        KernelInterface.__getitem__ = previous  # type: ignore[method-assign]


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)")
_SPILLS = re.compile(
    r"Function properties for (\w+)\n.*?(\d+) bytes spill stores, (\d+) bytes spill loads"
)


def _resources(cubin: bytes) -> tuple[int, int, int]:
    """Registers, stack frame and static shared bytes that ptxas wrote into the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        tool = triton.knobs.nvidia.cuobjdump.path
        report = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    found = _RESOURCES.search(report)
    assert found, f"cuobjdump printed no resource usage:\n{report}"
    registers, stack, static_shared = map(int, found.groups())
    return registers, stack, static_shared


def _describe(case: Case, arch: int, kernel: Any, spills: int | None) -> CompiledLaunch:
    registers, stack, static_shared = _resources(kernel.asm["cubin"])
    return CompiledLaunch(
        family=case.family,
        case=case.label,
        arch=arch,
        kernel=kernel.metadata.name,
        hash=kernel.hash,
        num_warps=kernel.metadata.num_warps,
        shared_bytes=kernel.metadata.shared + static_shared,
        registers=registers,
        stack_bytes=stack,
        spill_bytes=spills,
    )


def compile_case(case: Case, arch: int) -> list[CompiledLaunch]:
    """Run ``case``'s launcher with every launch compiled for ``arch``."""
    triton.knobs.nvidia.dump_ptxas_log = True  # printed on stdout by a fresh compile only
    log = io.StringIO()
    try:
        with _compile_instead_of_launch(arch) as compiled, contextlib.redirect_stdout(log):
            case.run()
    except Exception as e:  # a kernel that does not build: the gate's finding, not a crash
        message = f"{type(e).__name__}: {e}".strip()
        return [CompiledLaunch(case.family, case.label, arch, error=message[-3000:])]
    if not compiled:
        return [
            CompiledLaunch(case.family, case.label, arch, error="the launcher launched nothing")
        ]
    # ptxas's verbose log, by kernel: a kernel found in Triton's cache was not compiled again.
    spills = {name: int(s) + int(l) for name, s, l in _SPILLS.findall(log.getvalue())}
    return [_describe(case, arch, k, spills.get(k.metadata.name)) for k in compiled]


def run_gate(cases: list[Case], workers: int) -> list[CompiledLaunch]:
    """Compile every case for every target in ``workers`` processes, in the order given (the
    longest first, so the pool does not end waiting on one)."""
    tasks = [(case, target.arch) for case in cases for target in TARGETS]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = pool.map(compile_case, *zip(*tasks, strict=True))
        return [launch for launches in done for launch in launches]


def main() -> None:
    assert not triton.knobs.runtime.interpret, "unset TRITON_INTERPRET: the gate compiles"
    workers = int(os.environ.get("KVBATCH_COMPILE_WORKERS", os.cpu_count() or 1))
    for launch in run_gate(all_cases(), workers):
        sys.stdout.write(json.dumps(dataclasses.asdict(launch)) + "\n")


if __name__ == "__main__":
    main()
