"""Tests of `benchmarks/accelerator.py`.

The `--smoke` run's tables (the seed-vmapped ranking included), the time budget, out-of-memory rows
and the peak FLOP/s look-up (`zegot_jax.train.perf`, which training logs `mfu` with).
"""

import math
import types

import jax
import pytest
from md_tables import ROOT, run_script, tables

from zegot_jax.train import perf


@pytest.fixture
def bench(monkeypatch):
    """The benchmark modules, imported as the scripts import them (from `benchmarks/`)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import accelerator  # noqa: PLC0415
    import harness  # noqa: PLC0415

    return types.SimpleNamespace(accelerator=accelerator, harness=harness)


@pytest.mark.slow
def test_smoke_prints_every_table_with_finite_losses_and_cpu_agreement():
    done = run_script("accelerator.py", "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    device, agreement, steps, evaluation, ranking = tables(done.stdout)
    fields = {row["field"]: row["value"] for row in device}
    assert fields["platform"] == "cpu" and fields["device count"] == str(len(jax.devices("cpu")))
    assert fields["jax / jaxlib"].startswith(jax.__version__)
    assert [row["matmul precision"] for row in agreement] == ["default", "highest"]
    for row in agreement:
        assert math.isfinite(float(row["CPU loss"])) and row["device"] == "cpu"
        assert float(row["loss rel. diff"]) < 1e-4 and float(row["gradient max rel. diff"]) < 1e-4
    assert sorted((r["clip.dtype"], r["K"]) for r in steps) == [
        ("bfloat16", "3"),
        ("bfloat16", "5"),
        ("float32", "3"),
        ("float32", "5"),
    ]
    for row in steps:
        step_s = float(row["step (ms)"].replace(",", "")) / 1e3
        assert step_s > 0 and math.isfinite(float(row["loss"]))
        assert float(row["images/s"].replace(",", "")) == pytest.approx(16 / step_s, rel=0.01)
        assert float(row["GFLOP / step (XLA)"].replace(",", "")) > 0
        assert row["MFU"] == "n/a" and row["peak memory (GiB)"].endswith("(compiled temp)")
        assert int(row["runs"]) >= 1
    (row,) = evaluation
    assert (row["K"], row["image size"], row["batch"]) == ("5", "32x42", "8")
    assert float(row["images/s"].replace(",", "")) == pytest.approx(
        8e3 / float(row["batch time (ms)"].replace(",", "")), rel=0.01
    )
    assert [row["variant"] for row in ranking] == ["default", "model.ot.enabled=False"]
    for row in ranking:
        assert row["seeds"] == "2" and row["steps"] == "2" and float(row["compile (s)"]) > 0
        assert all(math.isfinite(float(row[k].split(" ± ")[0])) for k in ("mIoU(S)", "hIoU"))
    assert ranking[1]["hIoU - default [95%]"].startswith(("+", "-"))


def test_a_budget_too_small_skips_everything_with_the_estimate():
    done = run_script("accelerator.py", "--smoke", "--budget-s", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    _, agreement, steps, evaluation, ranking = tables(done.stdout)
    assert agreement[0]["matmul precision"] == "skipped"
    assert ranking == [] and "against the default, seeds vmapped; skipped: estimated" in done.stdout
    assert len(steps) == 4
    assert all(r["compile (s)"].startswith("skipped: estimated") and r["loss"] == "" for r in steps)
    assert evaluation[0]["compile (s)"].startswith("skipped: estimated")


def _fake_setup():
    config = types.SimpleNamespace(clip=types.SimpleNamespace(text_context_length=16))
    model = types.SimpleNamespace(text_inputs=lambda names, length: {})
    return types.SimpleNamespace(model=model, config=config, step=None, frozen=None, state=lambda: None)


def test_out_of_memory_is_a_row_and_other_errors_propagate(bench, monkeypatch):
    args = bench.accelerator.parse_args(["--smoke"])
    budget = bench.accelerator.Budget(60.0)
    memory = bench.accelerator.PeakMemory(jax.devices()[0])

    def oom(*_, **__):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 80.0GiB")

    monkeypatch.setattr(bench.harness, "measure", oom)
    row = bench.accelerator.step_row(_fake_setup(), "float32", 3, args, budget, memory)
    assert row[:2] == ["float32", 3] and row[2].startswith("out of memory: RESOURCE_EXHAUSTED")
    assert len(row) == len(bench.accelerator.STEP_HEADER)

    def other(*_, **__):
        raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: something else")

    monkeypatch.setattr(bench.harness, "measure", other)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
        bench.accelerator.step_row(_fake_setup(), "float32", 3, args, budget, memory)


def test_peak_lookup_tells_card_variants_apart(bench):
    peaks = perf.peaks
    sxm, pcie = peaks("NVIDIA H100 80GB HBM3"), peaks("NVIDIA H100 PCIe")
    assert sxm.bfloat16 > pcie.bfloat16 > 0 and sxm.tf32 > sxm.float32 > 0
    assert peaks("NVIDIA H200") == sxm  # same GH100 compute
    assert peaks("TPU v5 lite").bfloat16 < peaks("TPU v5").bfloat16 == peaks("TPU v5p").bfloat16
    assert peaks("TPU v4").float32 is None  # no float32 figure published for TPUs
    assert peaks("cpu") == peaks("NVIDIA H200 NVL") == (None, None, None)
    assert perf.mfu(1e12, 0.5, 4e12) == 0.5 and bench.accelerator.mfu_cell(1e12, 0.5, 4e12) == "50.0%"
    assert perf.mfu(1e12, 0.5, None) is perf.mfu(float("nan"), 0.5, 1.0) is None
    assert bench.accelerator.mfu_cell(1e12, 0.5, None) == "n/a"
    assert perf.peak_for("NVIDIA H100 80GB HBM3", "bfloat16") == sxm.bfloat16
    assert perf.peak_for("NVIDIA H100 80GB HBM3", "float32") == sxm.tf32  # default precision
    assert perf.peak_for("TPU v5 lite", "float32") is None and perf.peak_for("cpu", "bfloat16") is None


def test_relative_difference_is_per_leaf_against_the_reference(bench):
    diff = bench.accelerator.max_relative
    assert diff({"a": [1.0, 2.0], "b": [10.0]}, {"a": [1.0, 2.0], "b": [10.0]}) == 0.0
    assert diff({"a": [1.0, 2.5], "b": [10.0]}, {"a": [1.0, 2.0], "b": [10.0]}) == 0.25
    assert diff({"a": [1.0], "b": [101.0]}, {"a": [1.0], "b": [100.0]}) == pytest.approx(0.01)
