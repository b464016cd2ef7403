"""The W1 benchmark end to end on the CPU, at a toy size: the GPU sessions that run it for
real should only ever spend their time measuring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from infra.harness.workloads import make_w1

ROOT = Path(__file__).resolve().parents[2]


def test_w1_matches_nano_vllm_draws() -> None:
    """Same generator, same order of draws as nano-vllm's bench.py."""
    workload = make_w1()
    assert len(workload.prompts) == 256
    assert all(100 <= len(p) <= 1024 for p in workload.prompts)
    assert all(100 <= m <= 1024 for m in workload.max_tokens)
    assert all(0 <= t <= 10000 for p in workload.prompts for t in p)
    assert workload.prompts == make_w1().prompts  # seeded
    assert sum(len(p) for p in workload.prompts) > 100_000


def test_w1_runs_and_reports_roofline_phases_and_transformers(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    config_only = tmp_path / "model"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_model_dirs["qwen2"] / "config.json").read_text())
    command = [
        sys.executable, "-m", "benchmarks.w1_throughput",
        "--model", str(config_only), "--device", "cpu",
        "--num-seqs", "6", "--min-len", "8", "--max-len", "24",
        "--hf-seqs", "3", "--kv-cache-memory-gb", "0.05",
        "--name", "w1_smoke", "--results-dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "w1_smoke.json").read_text())
    workload = make_w1(6, 8, 24, max_token_id=511)  # the tiny vocabulary has 512 ids
    assert result["engine"]["output_tokens"] == sum(workload.max_tokens)
    assert result["engine"]["tokens_per_s"] > 0
    assert result["achieved_fraction_of_roofline"] > 0
    steps = result["steps"]
    assert steps["all_steps"]["output_tokens"] == sum(workload.max_tokens)
    assert 0 < steps["decode_steps"]["num_steps"] < steps["all_steps"]["num_steps"]
    phases = steps["all_steps"]["phase_s"]
    assert abs(sum(phases.values()) - steps["all_steps"]["seconds"]) < 1e-6
    assert result["transformers"]["num_seqs"] == 3
    assert result["transformers"]["output_tokens"] == sum(workload.max_tokens[:3])
    assert result["speedup_vs_transformers_same_subset"] > 0
    assert result["model_traffic"]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # fp32
