"""The README's main job end to end: ``kvbatch demo`` starts the stack, runs a real batch
through the ``openai`` SDK and the engine on the CPU, prints the answers, stops everything."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest

from infra.sample_batch import read_prompts
from tests.infra.stack_runner import isolated_env, launch, wait_for_line

pytestmark = pytest.mark.slow


def test_demo_answers_the_sample_prompts_and_stops(tmp_path: Path, smollm2_dir: Path) -> None:
    env = isolated_env("redis://127.0.0.1:6379/0")
    log = tmp_path / "demo.log"
    args = ["demo", "--limit", "2", "--max-tokens", "8", "--timeout", "240"]
    args += ["--var-dir", str(tmp_path / "var"), "--model", str(smollm2_dir)]
    demo = launch(args, env, log)
    try:
        wait_for_line(demo, log, "created batch", timeout_s=300)
        assert demo.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        if demo.poll() is None:
            demo.kill()
    text = log.read_text()
    for prompt in read_prompts()[:2]:
        assert prompt in text
    assert "2 answered, 0 failed" in text
    assert "(no answer)" not in text
    started = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", text)]
    assert len(started) == 2  # the API and the worker: Redis was already running
    assert not [pid for pid in started if psutil.pid_exists(pid)]
