"""What a training run logs to tune with: step and compile time, FLOP/s, MFU, memory, a trace.

`StepClock` times the steps between two log steps with compilation and evaluation left out;
`figures` turns that into the row's `step_time_s`, `images_per_s(_per_device)`,
`tflops_per_device` (XLA's FLOP count of the compiled step, `flops`, over the step time), `mfu`
(that over the device's peak, `PEAKS`), device memory and host RSS. `Profile` writes a
`jax.profiler` trace of `train.profile_steps`. `benchmarks/accelerator.py` uses the same FLOP
count and peaks.

Peak dense FLOP/s per chip (no 2:4 sparsity; NVIDIA's datasheets print TF32/BF16 tensor-core
figures with sparsity, twice these). Sources, looked up December 2026:

- H100 SXM: FP32 66.9, TF32 494.7, BF16 989.4 TFLOP/s, NVIDIA's H100 datasheet as tabulated at
  https://glennklockwood.com/garden/processors/h100
- H100 PCIe: FP32 51, TF32 756 / 2, BF16 1,513 / 2 (sparse figures halved),
  https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html
- H200 SXM: the H100 SXM's GH100 compute with more memory ("FP16 / BF16 (dense) ~989 TFLOPS"),
  https://itkb.uw.cz/2026/06/nvidia-h200-vs-b300-precisions-cores.html and
  https://aiwiki.ai/wiki/nvidia_h200 (same silicon); the NVL (PCIe) boards run lower: not listed.
- A100 (SXM and PCIe): FP32 19.5, TF32 156, BF16 312, NVIDIA's A100 datasheet as tabulated at
  https://glennklockwood.com/garden/processors/A100
- TPU bf16 per chip: v4 275 (https://cloud.google.com/tpu/docs/v4), v5e 197
  (https://cloud.google.com/tpu/docs/v5e), v5p 459 (https://cloud.google.com/tpu/docs/v5p-training),
  v6e 918 (https://docs.cloud.google.com/tpu/docs/v6e). No float32 figure is published for TPUs
  (float32 products run as bf16 passes), so their float32 MFU is unknown (null).

`device_kind` strings as jax reports them: 'NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe',
'NVIDIA H200', 'NVIDIA A100-SXM4-80GB', 'TPU v4', 'TPU v5 lite' (v5e), 'TPU v5' / 'TPU v5p',
'TPU v6 lite' (v6e).
"""

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax


class Peaks(NamedTuple):
    """Peak dense FLOP/s of one chip; None where not published."""

    float32: float | None  # non-tensor-core float32 (GPU); None on TPU
    tf32: float | None  # tensor-core TF32 (GPU)
    bfloat16: float | None


_T = 1e12
_H100_SXM = Peaks(66.9 * _T, 494.7 * _T, 989.4 * _T)

# First match wins (lower-cased substring of device_kind): specific names before general ones.
PEAKS: tuple[tuple[str, Peaks | None], ...] = (
    ("h100 pcie", Peaks(51.0 * _T, 378.0 * _T, 756.0 * _T)),
    ("h100 nvl", None),
    ("h100", _H100_SXM),
    ("h200 nvl", None),
    ("h200", _H100_SXM),
    ("a100", Peaks(19.5 * _T, 156.0 * _T, 312.0 * _T)),
    ("tpu v4 lite", None),
    ("tpu v4", Peaks(None, None, 275.0 * _T)),
    ("tpu v5 lite", Peaks(None, None, 197.0 * _T)),
    ("tpu v5e", Peaks(None, None, 197.0 * _T)),
    ("tpu v5", Peaks(None, None, 459.0 * _T)),  # 'TPU v5' and 'TPU v5p'
    ("tpu v6 lite", Peaks(None, None, 918.0 * _T)),
    ("tpu v6e", Peaks(None, None, 918.0 * _T)),
)


def peaks(device_kind: str) -> Peaks:
    """The peaks of a device kind; all None for a kind not in `PEAKS` (a CPU, an unknown card)."""
    kind = device_kind.lower()
    for key, value in PEAKS:
        if key in kind:
            return value or Peaks(None, None, None)
    return Peaks(None, None, None)


def peak_for(device_kind: str, dtype: str) -> float | None:
    """The peak a step computing in `dtype` ('float32' or 'bfloat16') is measured against.

    float32 products run as TF32 on GPUs at JAX's default matmul precision, so float32 uses the
    TF32 peak there unless `jax_default_matmul_precision` asks for full float32.
    """
    p = peaks(device_kind)
    if dtype == "bfloat16":
        return p.bfloat16
    full = str(jax.config.jax_default_matmul_precision or "").lower() in ("highest", "float32")
    return p.float32 if full or p.tf32 is None else p.tf32


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """`flops / seconds / peak` (a fraction), None when the peak or the FLOPs are unknown."""
    if peak is None or not flops > 0 or not seconds > 0:
        return None
    return flops / seconds / peak


def flops(compiled: Any) -> float:
    """FLOPs of one run of a compiled program per device, by XLA's cost analysis.

    For a program sharded over several devices, the count is one device's share; nan when XLA
    reports none.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    value = (analysis or {}).get("flops", -1.0)
    return float(value) if value >= 0 else float("nan")


def device_memory() -> tuple[float | None, float | None]:
    """(in use, peak) GiB of this process's first device; None where the backend reports none."""
    stats = jax.local_devices()[0].memory_stats() or {}
    gib = [stats.get(k) for k in ("bytes_in_use", "peak_bytes_in_use")]
    return tuple(None if v is None else v / 2**30 for v in gib)


def host_rss_gib() -> float:
    """This process's resident memory now (GiB); the peak where /proc is absent (macOS)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


class StepClock:
    """Wall time of the steady steps since the last log step.

    Compiling happens before the clock starts, and the first step after it (which allocates and
    warms up) is waited for and left out; evaluating, saving and tracing are `exclude`d, so
    `step_time_s` is the steady step alone.
    """

    def __init__(self):
        self.start: float | None = None
        self.step, self.excluded = 0, 0.0

    def stepped(self, step: int, outputs: Any, excluded: float = 0.0) -> None:
        """Records that `step` was dispatched (`excluded` seconds of it were not the step)."""
        if self.start is None:
            jax.block_until_ready(outputs)
            self.start, self.step, self.excluded = time.perf_counter(), step, 0.0
        else:
            self.excluded += excluded

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` (spent on something other than steps) out of this lap."""
        self.excluded += seconds

    def lap(self, step: int) -> float | None:
        """Seconds per step since the last lap (None if no steady step ran); starts the next."""
        if self.start is None or step <= self.step:
            return None
        now = time.perf_counter()
        steps, spent = step - self.step, now - self.start - self.excluded
        self.start, self.step, self.excluded = now, step, 0.0
        return spent / steps if spent > 0 else None


def figures(
    step_time_s: float | None, flops_per_device: float, *, global_batch: int, dtype: str
) -> dict[str, float | None]:
    """The per-log-step performance row (see the module docstring); None where unknown."""
    devices = jax.device_count()
    used, peak = device_memory()
    row: dict[str, float | None] = {
        "step_time_s": step_time_s,
        "images_per_s": None,
        "images_per_s_per_device": None,
        "tflops_per_device": None,
        "mfu": None,
    }
    if step_time_s:
        row["images_per_s"] = global_batch / step_time_s
        row["images_per_s_per_device"] = global_batch / step_time_s / devices
        if flops_per_device > 0:
            row["tflops_per_device"] = flops_per_device / step_time_s / 1e12
        row["mfu"] = mfu(flops_per_device, step_time_s, peak_for(jax.devices()[0].device_kind, dtype))
    return {**row, "device_memory_gib": used, "device_peak_memory_gib": peak, "host_rss_gib": host_rss_gib()}


class Profile:
    """A `jax.profiler` trace of steps `first..last` (`train.profile_steps`; () is off).

    It goes under `workdir/tensorboard`, in its `plugins/profile/<time>/` (where TensorBoard's
    profile tab and XProf look), written by process `process` (-1: every process).
    """

    def __init__(self, steps: tuple[int, ...], workdir: str, process: int = 0):
        wanted = process in (-1, jax.process_index())
        self.first, self.last = steps if steps and wanted else (0, -1)
        self.log_dir = (
            str(Path(workdir) / "tensorboard")
            if "://" not in workdir
            else f"{workdir.rstrip('/')}/tensorboard"
        )
        self.active = False

    def before(self, step: int) -> float:
        """Starts the trace before the first step of the range this run reaches.

        Returns:
            The seconds starting took (0 when it did not start).
        """
        if self.active or not self.first <= step <= self.last:
            return 0.0
        began = time.perf_counter()
        jax.profiler.start_trace(self.log_dir)
        self.active = True
        return time.perf_counter() - began

    def after(self, step: int, outputs: Any) -> float:
        """Stops it after the last step, once `outputs` are computed.

        Returns:
            The seconds the stop took (writing the trace; 0 when it did not stop).
        """
        return self.stop(outputs) if self.active and step >= self.last else 0.0

    def stop(self, outputs: Any = None) -> float:
        """Stops a running trace once `outputs` are computed; the seconds writing it took."""
        if not self.active:
            return 0.0
        jax.block_until_ready(outputs)
        began = time.perf_counter()
        jax.profiler.stop_trace()
        self.active = False
        return time.perf_counter() - began
