"""A short run of benchmarks/load_bench.py: 100 concurrent pollers while a batch runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.harness.load import run_bench

pytestmark = pytest.mark.slow


def test_hundred_pollers_see_no_errors(fast_chat_model: Path, tmp_path: Path) -> None:
    result = run_bench(
        fast_chat_model, clients=100, duration_s=4, interval_s=0.1, num_lines=64, tmp=tmp_path
    )
    assert result["num_requests"] > 400, result
    assert result["num_errors"] == 0, result["error_samples"]
    assert result["batch_status_at_end"] in ("in_progress", "finalizing", "completed")
