"""JSON that every reader accepts: NaN and Inf become `null` (Python's `json` writes `NaN`).

For what this project writes for people and tools to read: `metrics.jsonl`, `results.json`, the
`segment` summaries.
"""

import json
import math
from typing import Any

import numpy as np


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` with non-finite floats (also numpy scalars) written as `null`."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)
