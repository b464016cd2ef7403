"""The compile gate: every Triton kernel the engine launches builds for an A100 and an H100.

No GPU is needed: ``tests.kernels.compile_gate`` compiles each launch ahead of time for sm_80
and sm_90 in a subprocess (this process interprets Triton), and this test checks what came
back against each device: the shared memory a block needs must fit, and ptxas must not spill.
A kernel change that would not build or not launch on an H100 fails here on a CPU.

Triton's on-disk cache (``~/.triton/cache``) keeps the binaries, so only kernels whose source
changed are compiled again on a later run.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.attention_triton import attention_tiles
from tests.kernels.compile_cases import (
    BLOCK_SIZES,
    DTYPES,
    GROUPS,
    HEAD_SIZES,
    all_cases,
    attention_cases,
    step_shapes,
)
from tests.kernels.compile_gate import TARGETS, CompiledLaunch

ROOT = Path(__file__).parents[2]


def triton_kernels_in_kernels_package() -> list[str]:
    """The ``@triton.jit`` functions named ``*_kernel`` in ``kernels/``: the ones launched
    (the other jit functions are helpers inlined into them)."""
    names = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel"):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                names += [node.name] if any("triton.jit" in d for d in decorators) else []
    return names


@pytest.fixture(scope="module")
def compiled() -> list[CompiledLaunch]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.kernels.compile_gate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return [CompiledLaunch(**json.loads(line)) for line in done.stdout.splitlines()]


def test_every_launch_compiles_for_sm80_and_sm90(compiled: list[CompiledLaunch]) -> None:
    failed = [f"sm_{c.arch} {c.case}:\n{c.error}" for c in compiled if c.error]
    assert not failed, "\n\n".join(failed)
    expected = {(case.label, t.arch) for case in all_cases() for t in TARGETS}
    assert {(c.case, c.arch) for c in compiled} == expected
    # One family per Triton kernel in kernels/: a new kernel needs cases here.
    assert {c.kernel for c in compiled} == set(triton_kernels_in_kernels_package())
    # The figures the other tests check were read from the binaries, not left at zero.
    attention = [c for c in compiled if c.family == "paged_attention"]
    assert all(c.shared_bytes > 0 and c.registers > 0 for c in attention)


def test_shared_memory_fits_the_device(compiled: list[CompiledLaunch]) -> None:
    limits = {t.arch: t.max_shared_bytes for t in TARGETS}
    too_big = [
        f"sm_{c.arch} {c.case}: {c.shared_bytes} bytes > {limits[c.arch]}"
        for c in compiled
        if c.shared_bytes > limits[c.arch]
    ]
    assert not too_big, "\n".join(too_big)


def test_ptxas_spills_nothing(compiled: list[CompiledLaunch]) -> None:
    """ptxas's verbose spill count where this run compiled the kernel (a cached binary has no
    log), and on every binary its stack frame, where spilled registers live."""
    spilled = [
        f"sm_{c.arch} {c.case}: {c.registers} registers, {c.num_warps} warps, "
        f"{c.stack_bytes} bytes of stack, {c.spill_bytes} bytes spilled"
        for c in compiled
        if c.stack_bytes or c.spill_bytes
    ]
    assert not spilled, "\n".join(spilled)


def test_attention_cases_cover_every_engine_axis() -> None:
    """Every tile configuration the launcher can pick for any engine step is compiled, and
    every value of the other axes is among the launches (a one-token decode too)."""
    cases = [c.params for c in attention_cases()]
    for axis, values in (
        ("dtype", DTYPES),
        ("head_size", HEAD_SIZES),
        ("group", GROUPS),
        ("block_size", BLOCK_SIZES),
    ):
        assert {c[axis] for c in cases} == set(values), axis
    launched = {
        attention_tiles(c["group"], c["head_size"], c["max_query_len"], c["max_seq_len"])
        for c in cases
    }
    every = {
        attention_tiles(group, head_size, *step)
        for group, head_size, step in itertools.product(GROUPS, HEAD_SIZES, step_shapes())
    }
    assert launched == every
    assert any(c["max_query_len"] == 1 for c in cases), "no decode"
