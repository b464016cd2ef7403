from __future__ import annotations

import os
from pathlib import Path

# Triton decides at decoration time whether to interpret kernels: without a GPU, tests run
# every Triton kernel through its CPU interpreter, so this must be set before kernels import.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (infra/test.sh runs three test processes on CI's two cores) each process,
# and every worker or API it starts, computes on one intra-op thread: two processes of two
# OpenMP threads each on two cores spin against each other and run slower than one each.
# Set before torch is imported here or in a child, which both read it at start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from infra.harness.tiny_models import build_tiny_model

TINY_KINDS = ("llama", "qwen2", "qwen3")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: build_tiny_model(kind, root / kind) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory, fetched once into ``models/``."""
    from engine.model_fetch import fetch_model

    return fetch_model("smollm2-135m-instruct", Path(__file__).resolve().parents[1] / "models")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding ``slow`` tests first, each file's tests in their own order.

    infra/test.sh hands whole files to its test processes in collection order; a long file
    handed out last (a fault suite of two minutes) ran alone while the other processes sat
    idle. Started first, the long files overlap and the short ones fill in around them.
    Every process sorts the same collection the same way, as pytest-xdist requires."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
