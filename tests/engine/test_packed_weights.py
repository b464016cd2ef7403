"""Packed projection weights (fp32, CPU): panels for the C kernel, or oneDNN's layout where no
compiler is found. The same products as ``F.linear``, turned on by default only where they
apply, and the engine's greedy outputs unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.models import packed_weights
from engine.models.layers import Linear
from engine.models.packed_weights import Layout, PackedWeight, packing_layout
from kernels.cpu_library import kernel_library
from kernels.cpu_linear import panel_linear

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(
    packing_layout(CPU, torch.float32) is None, reason="neither a C compiler nor oneDNN here"
)


@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 17, 64, 97, 300])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("out_features", "in_features"), [(384, 96), (100, 37)])
def test_packed_linear_equals_f_linear(
    layout: Layout, rows: int, bias: bool, out_features: int, in_features: int
) -> None:
    """Each layout packs once, and every call passes its own row count: the products must
    match ``F.linear`` at every count, including rows past a register tile (6) and a row
    block (96), and outputs that end inside a panel (100 columns)."""
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(out_features, in_features, generator=gen)
    b = torch.randn(out_features, generator=gen) if bias else None
    x = torch.randn(rows, in_features, generator=gen)
    packed = PackedWeight.of(weight, layout)
    expected = F.linear(x, weight, b)
    torch.testing.assert_close(packed.linear(x, b), expected, rtol=1e-5, atol=1e-4)
    # Leading dimensions fold into rows, as F.linear's do.
    got = packed.linear(x.view(1, rows, in_features), b)
    assert got.shape == (1, rows, out_features)
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-4)
    # Rows of a wider tensor (a view whose rows are further apart) give the same products.
    wide = torch.cat([x, torch.randn(rows, 5, generator=gen)], dim=1)[:, :in_features]
    torch.testing.assert_close(packed.linear(wide, b), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("in_features", [160, 1600])
def test_panel_products_do_not_depend_on_the_rows_beside_them(
    threads: int, in_features: int
) -> None:
    """Each output of the panel kernel is one in-order sum over the input features, whatever
    the row count, the tile or the thread: a row's products are bit-identical alone and in
    a batch (unlike a library GEMM's, whose blocking follows the row count). 200 outputs are
    an odd number of panels (5 of 48 columns with AVX-512), which 2 or 3 threads share with
    a panel cut between two of them; 1,600 inputs put the 130 rows in three row blocks."""
    gen = torch.Generator().manual_seed(threads)
    weight = torch.randn(200, in_features, generator=gen)
    packed = PackedWeight.of(weight, Layout.PANELS)
    x = torch.randn(130, in_features, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batch = packed.linear(x)
        for i in (0, 5, 6, 95, 96, 129):
            assert torch.equal(packed.linear(x[i : i + 1]), batch[i : i + 1])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("limit", [640, None])
def test_prefill_sized_row_counts_take_mkls_gemm_where_it_is_faster(
    limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an Intel CPU (limit 640) prefill-sized row counts take F.linear on the unpacked
    weight, to the bit; elsewhere (no limit) the panels serve them too."""
    monkeypatch.setattr(packed_weights, "PANEL_MAX_ROWS", limit)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=gen)
    packed = PackedWeight.of(weight, Layout.PANELS)
    many = torch.randn(640, 64, generator=gen)
    assert packed.library is not None
    panels = panel_linear(many, packed.packed, 96, packed.library)
    assert torch.equal(packed.linear(many), F.linear(many, weight) if limit else panels)
    fewer = many[:-1]
    torch.testing.assert_close(packed.linear(fewer), F.linear(fewer, weight))


@pytest.mark.parametrize(
    ("cpuinfo", "intel"),
    [("vendor_id\t: GenuineIntel\n", True), ("vendor_id\t: AuthenticAMD\n", False)],
)
def test_only_an_intel_cpu_hands_prefill_rows_to_mkl(
    cpuinfo: str, intel: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    real_path = packed_weights.Path
    monkeypatch.setattr(
        packed_weights,
        "Path",
        lambda p: real_path(tmp_path / "cpuinfo") if p == "/proc/cpuinfo" else real_path(p),
    )
    assert packed_weights._intel_cpu() is intel


def test_without_the_c_kernels_weights_take_onednns_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert packing_layout(CPU, torch.float32) is (
        Layout.PANELS if kernel_library() is not None else Layout.ONEDNN
    )
    monkeypatch.setattr("engine.models.packed_weights.kernel_library", lambda: None)
    assert packing_layout(CPU, torch.float32) is Layout.ONEDNN
    assert packing_layout(CPU, torch.bfloat16) is None


def test_one_row_on_one_thread_takes_f_linear_and_more_take_the_reordered_copy() -> None:
    """On one thread a single row is ``F.linear``'s GEMV to the bit; two rows, or two threads,
    go through oneDNN (whose sums differ from ``F.linear``'s in the last bits)."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(512, 256, generator=gen)
    packed = PackedWeight.of(weight, Layout.ONEDNN)
    one, two = torch.randn(1, 256, generator=gen), torch.randn(2, 256, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(packed.linear(one), F.linear(one, weight))
        reordered = torch.ops.mkldnn._linear_pointwise(two, packed.packed, None, "none", [], "")
        assert torch.equal(packed.linear(two), reordered)
        torch.set_num_threads(2)
        reordered = torch.ops.mkldnn._linear_pointwise(one, packed.packed, None, "none", [], "")
        assert torch.equal(packed.linear(one), reordered)
    finally:
        torch.set_num_threads(before)


def test_a_packed_copy_that_disagrees_is_caught_and_nothing_is_packed(
    tiny_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    weight = torch.randn(64, 32)
    for layout in Layout:
        packed = PackedWeight.of(weight, layout)
        assert packed.agrees()
        flipped = PackedWeight.of(weight.flip(0), layout)
        assert not PackedWeight(weight, flipped.packed, layout, packed.library).agrees()

    # As if this machine packed every weight wrongly: the runner keeps F.linear.
    monkeypatch.setattr(PackedWeight, "agrees", lambda self: False)
    runner = _runner(tiny_model_dirs["llama"])
    assert runner.model.head_packed is None
    assert all(m.packed is None for m in _linears(runner))


def _linears(runner: ModelRunner) -> list[Linear]:
    return [m for m in runner.model.modules() if isinstance(m, Linear)]


def _runner(model_dir: Path, **args: object) -> ModelRunner:
    config = EngineConfig(model=str(model_dir), device="cpu", num_kv_blocks=32, **args)  # type: ignore[arg-type]
    return ModelRunner(config)


def test_weights_are_packed_by_default_for_fp32_on_the_cpu_only(
    tiny_model_dirs: dict[str, Path],
) -> None:
    model_dir = tiny_model_dirs["llama"]
    packed = _runner(model_dir)
    assert packed.model.head_packed is not None
    assert all(m.packed is not None for m in _linears(packed))
    for runner in (
        _runner(model_dir, cpu_packed_weights=False),
        _runner(model_dir, dtype="bfloat16"),
    ):
        assert runner.model.head_packed is None
        assert all(m.packed is None for m in _linears(runner))


def test_greedy_outputs_are_the_same_with_and_without_packing(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """Prefill chunks, batched decodes and single-row decodes all take the reordered
    weights; the tokens match the unpacked engine's (which the parity tests hold to
    transformers)."""
    model_dir = str(tiny_model_dirs["qwen3"])
    prompts = [list(range(3, 3 + n)) for n in (1, 5, 40, 90)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outputs = []
    for on in (True, False):
        llm = LLM(model_dir, cpu_packed_weights=on, max_num_batched_tokens=64, block_size=16)
        done = llm.generate(prompts, params, use_tqdm=False)
        outputs.append([o.outputs[0].token_ids for o in done])
    assert outputs[0] == outputs[1]
