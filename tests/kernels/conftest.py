"""Kernel tests run on the CPU (Triton interpreted) and, when present, on CUDA."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.common import DEVICES


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
