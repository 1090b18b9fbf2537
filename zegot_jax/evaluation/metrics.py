"""Segmentation metrics: a device-side confusion matrix and the zero-shot summary (mIoU(S/U), hIoU).

Conventions:
- `conf[i, j]` counts pixels labelled `i` and predicted `j` (rows: ground truth).
- IoU of class c: `conf[c, c] / (row_c + col_c - conf[c, c])`. A class whose union is 0 (neither
  labelled nor predicted anywhere) has no IoU (`None`) and is left out of every mean, like a nan-mean.
- mIoU(S) averages the seen classes, mIoU(U) the unseen classes, both from one prediction over all
  classes; hIoU = 2 S U / (S + U). All values are fractions in [0, 1]; undefined ones are `None`,
  so the summary is plain JSON (`json.dumps(summary, allow_nan=False)` works).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax import tables


def confusion_matrix(
    pred: jax.Array, label: jax.Array, num_classes: int, ignore_index: int = 255
) -> jax.Array:
    """Counts (label, prediction) pairs on device; jit-able, sums across batches.

    Args:
        pred: predicted class ids, any shape (e.g. `[B, H, W]`).
        label: ground-truth ids, same shape; `ignore_index` and ids outside `[0, K)` are skipped
            (as are predictions outside `[0, K)`).
        num_classes: K (static).
        ignore_index: label id of unlabelled pixels.

    Returns:
        `[K, K]` int32 counts, rows = label, columns = prediction. int32 holds 2^31 pixels; sum
        many batches on the host in int64 if a whole dataset could exceed that.
    """
    if pred.shape != label.shape:
        raise ValueError(f"confusion_matrix: pred {pred.shape} and label {label.shape} differ.")
    k = num_classes
    pred = pred.reshape(-1).astype(jnp.int32)
    label = label.reshape(-1).astype(jnp.int32)
    valid = (label != ignore_index) & (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
    index = jnp.where(valid, label * k + pred, k * k)  # k*k is out of range: dropped
    counts = jnp.zeros((k * k,), jnp.int32).at[index].add(1, mode="drop")
    return counts.reshape(k, k)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize(conf: Any, class_names: Sequence[str], unseen: Sequence[int]) -> dict[str, Any]:
    """Zero-shot summary of a confusion matrix.

    Args:
        conf: `[K, K]` counts (rows = label), e.g. a sum of `confusion_matrix` results.
        class_names: the K class names, in index order.
        unseen: indices of the unseen classes (may be empty: then mIoU(U) and hIoU are None).

    Returns:
        A JSON-serialisable dict: `miou_seen`, `miou_unseen`, `hiou`, `miou`, `pixel_acc`
        (fractions or None), `per_class_iou` {name: fraction or None}, `unseen_classes` [names],
        `num_pixels` (int).
    """
    conf = np.asarray(conf, np.int64)
    k = len(class_names)
    if conf.shape != (k, k):
        raise ValueError(f"summarize: conf has shape {conf.shape} but there are {k} class names.")
    unseen = [int(i) for i in unseen]
    if any(not 0 <= i < k for i in unseen) or len(set(unseen)) != len(unseen):
        raise ValueError(f"summarize: unseen indices {unseen} must be distinct and in [0, {k}).")
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(k)]
    unseen_set = set(unseen)
    seen_mean = _mean([iou[c] for c in range(k) if c not in unseen_set])
    unseen_mean = _mean([iou[c] for c in unseen])
    if seen_mean is None or unseen_mean is None:
        hiou = None
    else:
        total = seen_mean + unseen_mean
        hiou = 2 * seen_mean * unseen_mean / total if total > 0 else 0.0
    num_pixels = int(conf.sum())
    return {
        "miou_seen": seen_mean,
        "miou_unseen": unseen_mean,
        "hiou": hiou,
        "miou": _mean(iou),
        "pixel_acc": float(tp.sum() / num_pixels) if num_pixels else None,
        "per_class_iou": {name: iou[c] for c, name in enumerate(class_names)},
        "unseen_classes": [class_names[c] for c in unseen],
        "num_pixels": num_pixels,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """Markdown: the headline row (percent) then one row per class with its split."""
    headline = tables.markdown(
        ("mIoU(S)", "mIoU(U)", "hIoU", "mIoU", "pixel acc"),
        [[_percent(summary[key]) for key in ("miou_seen", "miou_unseen", "hiou", "miou", "pixel_acc")]],
    )
    unseen = set(summary.get("unseen_classes", ()))
    per_class = tables.markdown(
        ("class", "split", "IoU"),
        [
            (name, "unseen" if name in unseen else "seen", _percent(value))
            for name, value in summary["per_class_iou"].items()
        ],
    )
    return headline + "\n\n" + per_class
