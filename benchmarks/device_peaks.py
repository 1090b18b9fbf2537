"""Peak dense FLOP/s per accelerator, for model FLOP utilisation (MFU) in `accelerator.py`.

Dense figures (no 2:4 sparsity; NVIDIA's datasheets print TF32/BF16 tensor-core figures with
sparsity, twice these). Sources, looked up December 2026:

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
  (float32 products run as bf16 passes), so their float32 MFU is 'n/a'.

`device_kind` strings as jax reports them: 'NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe',
'NVIDIA H200', 'NVIDIA A100-SXM4-80GB', 'TPU v4', 'TPU v5 lite' (v5e), 'TPU v5' / 'TPU v5p',
'TPU v6 lite' (v6e).
"""

from typing import NamedTuple


class Peaks(NamedTuple):
    """Peak dense FLOP/s of one chip; None where not published."""

    float32: float | None  # non-tensor-core float32 (GPU); None on TPU
    tf32: float | None  # tensor-core TF32 (GPU)
    bfloat16: float | None


_T = 1e12
_H100_SXM = Peaks(66.9 * _T, 494.7 * _T, 989.4 * _T)

# First match wins (lower-cased substring of device_kind): specific names before general ones.
TABLE: tuple[tuple[str, Peaks | None], ...] = (
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
    """The peaks of a device kind; all None for a kind not in `TABLE` (a CPU, an unknown card)."""
    kind = device_kind.lower()
    for key, value in TABLE:
        if key in kind:
            return value or Peaks(None, None, None)
    return Peaks(None, None, None)


def mfu(flops: float, seconds: float, peak: float | None) -> str:
    """`flops / seconds / peak` as a percentage cell; 'n/a' when the peak or the flops are unknown."""
    if peak is None or not flops > 0 or not seconds > 0:
        return "n/a"
    return f"{100 * flops / seconds / peak:.1f}%"
