"""``kvbatch run-batch`` wired to the offline runner: a real file through the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.cli import main
from infra.sample_batch import chat_batch_lines, read_prompts, to_jsonl

pytestmark = pytest.mark.slow


def test_run_batch_answers_in_order_and_splits_errors_off(
    tmp_path: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    errors = tmp_path / "bad.jsonl"
    lines = chat_batch_lines(read_prompts()[:5], max_tokens=4)
    lines[2]["body"]["temperature"] = 5  # the endpoint would refuse it: a 400 error line
    lines[4]["body"]["tools"] = [{"type": "function", "function": {"name": "f"}}]
    source.write_bytes(to_jsonl(lines))
    argv = ["run-batch", "-i", str(source), "-o", str(target), "--model", str(smollm2_dir)]
    assert main([*argv, "--errors", str(errors), "--max-num-seqs", "4"]) == 0
    summary = capsys.readouterr().out
    assert "3 lines answered" in summary and "2 failed" in summary, summary
    results = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == ["prompt-0", "prompt-1", "prompt-3"]
    assert all(r["response"]["status_code"] == 200 for r in results)
    assert all(r["response"]["body"]["choices"][0]["message"]["content"] for r in results)
    failed = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [f["custom_id"] for f in failed] == ["prompt-2", "prompt-4"]
    assert all(f["response"]["status_code"] == 400 for f in failed)
    bodies = [f["response"]["body"]["error"] for f in failed]
    assert [e["param"] for e in bodies] == ["temperature", "tools"]
    assert all(e["type"] == "invalid_request_error" for e in bodies)
    assert "tool calling is not supported" in bodies[1]["message"]


def test_run_batch_errors_default_beside_the_output(
    tmp_path: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(to_jsonl(chat_batch_lines(read_prompts()[:1], max_tokens=2)))
    assert (
        main(["run-batch", "-i", str(source), "-o", str(target), "--model", str(smollm2_dir)]) == 0
    )
    summary = capsys.readouterr().out
    assert "1 lines answered" in summary and "0 failed" in summary
    assert (tmp_path / "out.errors.jsonl").read_text() == ""


def test_run_batch_serves_embeddings_and_responses(
    tmp_path: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mixed files are the service's business (one url per batch); run-batch answers each
    line by its own url, with the same bodies the service writes."""
    from engine import LLM

    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    errors = tmp_path / "bad.jsonl"
    model = str(smollm2_dir)
    texts = ["first text", "second, longer text than the first"]

    def line(custom_id: str, url: str, **body: object) -> dict[str, object]:
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": url,
            "body": {"model": model, **body},
        }

    lines = [
        line("emb", "/v1/embeddings", input=texts),
        line("resp", "/v1/responses", input="Say hi.", max_output_tokens=3, temperature=0),
        line("dims", "/v1/embeddings", input="x", dimensions=4),
    ]
    source.write_bytes(to_jsonl(lines))
    argv = ["run-batch", "-i", str(source), "-o", str(target), "--model", model]
    assert main([*argv, "--errors", str(errors)]) == 0
    assert "2 lines answered" in capsys.readouterr().out
    emb, resp = [json.loads(raw) for raw in target.read_text().splitlines()]
    expected = LLM(model, runner="pooling").embed(texts, use_tqdm=False)
    for item, want in zip(emb["response"]["body"]["data"], expected, strict=True):
        assert item["embedding"] == pytest.approx(want.outputs.embedding, abs=1e-5)
    body = resp["response"]["body"]
    assert body["object"] == "response" and body["status"] == "incomplete"
    assert body["usage"]["output_tokens"] == 3
    (refused,) = [json.loads(raw) for raw in errors.read_text().splitlines()]
    assert refused["response"]["body"]["error"]["param"] == "dimensions"


def test_run_batch_runs_lines_under_their_lora_modules(
    tmp_path: Path, smollm2_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """vLLM's ``--lora-modules``: a line naming an adapter runs under it, beside base-model
    lines in the same engine, and equals offline greedy under that adapter."""
    from engine import LLM, LoRARequest, SamplingParams
    from infra.harness.tiny_models import build_tiny_chat_model
    from tests.engine.lora_adapters import SPECS, build_random_adapter

    base = build_tiny_chat_model(tmp_path / "tiny", smollm2_dir, seed=5)
    adapter = build_random_adapter(base, tmp_path / "sql", SPECS[0])
    prompts = ["Name a colour.", "Count to three."]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        {
            "custom_id": f"{model}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": p}],
                "max_tokens": 5,
                "temperature": 0,
            },
        }
        for model in ("tiny", "sql")
        for i, p in enumerate(prompts)
    ]
    source.write_bytes(to_jsonl(lines))
    argv = ["run-batch", "-i", str(source), "-o", str(target), "--model", str(base)]
    assert main([*argv, "--lora-modules", f"sql={adapter}", "--max-lora-rank", "8"]) == 0
    assert "4 lines answered" in capsys.readouterr().out
    results = [json.loads(line) for line in target.read_text().splitlines()]
    got = [r["response"]["body"]["choices"][0]["message"]["content"] for r in results]
    llm = LLM(str(base), enable_lora=True, max_lora_rank=8)
    chats = [[{"role": "user", "content": p}] for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=5)
    expected = []
    for lora in (None, LoRARequest("sql", 1, str(adapter))):
        outputs = llm.chat(chats, params, use_tqdm=False, lora_request=lora)
        expected += [o.outputs[0].text for o in outputs]
    assert expected[:2] != expected[2:]  # the adapter changes the answers
    assert got == expected
    assert [r["response"]["body"]["model"] for r in results] == ["tiny", "tiny", "sql", "sql"]
