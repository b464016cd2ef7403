"""The CPU roofline's floor comes from the better probe of each rate, before or after the run."""

from __future__ import annotations

from benchmarks.cpu_roofline import best_limits
from benchmarks.roofline import DeviceLimits


def test_a_disturbed_probe_does_not_lower_the_limits() -> None:
    """A neighbour that took a core during one probe halves the GEMM rate that probe reads;
    the other probe's rate stands, whichever of the two was disturbed, and each rate is
    taken on its own (bandwidth from one probe, FLOP/s from the other)."""
    quiet = DeviceLimits(bandwidth_bytes_s=30e9, matmul_flops_s=210e9)
    disturbed = DeviceLimits(bandwidth_bytes_s=41e9, matmul_flops_s=112e9)
    expected = DeviceLimits(bandwidth_bytes_s=41e9, matmul_flops_s=210e9)
    assert best_limits(quiet, disturbed) == expected
    assert best_limits(disturbed, quiet) == expected
    assert best_limits(quiet, quiet) == quiet
