"""Every JSON file the project writes parses with a strict reader (no NaN literals)."""

import json

import numpy as np
import pytest

from zegot_jax import strict_json
from zegot_jax.train.metric_writer import MetricWriter


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_become_null():
    row = {"loss": float("nan"), "per_class": {"cat": np.float32(np.inf)}, "n": [1, -np.inf]}
    assert _strict(strict_json.dumps(row)) == {"loss": None, "per_class": {"cat": None}, "n": [1, None]}
    with pytest.raises(ValueError, match="NaN is not JSON"):
        _strict(json.dumps({"loss": float("nan")}))  # what the files held before


def test_metrics_jsonl_is_strict_json(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(3, {"loss": float("nan"), "miou": 0.5})
    writer.close()
    assert _strict((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "loss": None, "miou": 0.5}
