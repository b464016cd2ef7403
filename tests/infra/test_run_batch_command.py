"""``kvbatch run-batch`` wired to the offline runner: a real file through the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.cli import main
from infra.sample_batch import chat_batch_lines, read_prompts, to_jsonl

pytestmark = pytest.mark.slow


def test_run_batch_answers_every_line_in_order(
    tmp_path: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(to_jsonl(chat_batch_lines(read_prompts()[:3], max_tokens=4)))
    argv = ["run-batch", "-i", str(source), "-o", str(target), "--model", str(smollm2_dir)]
    assert main([*argv, "--max-num-seqs", "4"]) == 0
    assert "3 lines answered" in capsys.readouterr().out
    results = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == ["prompt-0", "prompt-1", "prompt-2"]
    assert all(r["response"]["status_code"] == 200 for r in results)
    assert all(r["response"]["body"]["choices"][0]["message"]["content"] for r in results)
