"""`benchmarks/synthetic_results.py`: intervals and paired differences of the RESULTS.md table."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from configs import synthetic

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic_results.py"


@pytest.fixture(scope="module")
def results():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PATH.parent))  # its `import harness`, as when run as a script
        spec = importlib.util.spec_from_file_location("synthetic_results", PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_interval_is_the_student_t_95_percent_half_width(results):
    mean, std, half = results.interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert mean == 3.0 and std == pytest.approx(math.sqrt(2.5))
    assert half == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert math.isnan(results.interval(np.array([1.0]))[2])


def test_contrasts_pair_runs_by_seed(results):
    def row(seed, s, u):
        return {"seed": seed, "miou_seen": s, "miou_unseen": u, "hiou": 2 * s * u / (s + u)}

    zegot, no_ot = results.ZEGOT_W8, "KgCoOp 8, no OT (uniform plan)"
    rows = {
        zegot: [row(0, 0.5, 0.4), row(1, 0.6, 0.5), row(2, 0.9, 0.9)],
        no_ot: [row(1, 0.5, 0.5), row(0, 0.4, 0.4)],  # seed 2 missing, other order
        "training-free templates": [row(0, 0.1, 0.1)],
    }  # deterministic: stands for all seeds
    text = results.contrasts(rows).splitlines()
    line = next(r for r in text if r.startswith("| ZegOT with KgCoOp 8 - training-free"))
    assert line.startswith("| ZegOT with KgCoOp 8 - training-free | +56.7")
    assert line.endswith("| 3 |")
    line = next(r for r in text if r.startswith("| OT - uniform plan"))
    # paired: (0.5 - 0.4, 0.6 - 0.5) -> +10.0 with zero spread; seed 2 has no partner
    assert line.startswith("| OT - uniform plan | +10.0 [+10.0, +10.0]") and line.endswith("| 2 |")


def test_every_variant_is_a_valid_override_of_the_default(results):
    from zegot_jax.inference import override

    base = synthetic.get_config()
    for name, changes in results.VARIANTS.items():
        config = override(base, changes)  # a mistyped field would raise here
        assert name and config.model.num_prompts >= 1
    assert set(results.EVAL_ONLY.values()) <= set(results.VARIANTS)


def test_variants_from_the_command_line_are_literals_or_strings(results):
    assert results.overrides_of(
        ["model.ot.epsilon=0.1", "model.ot.enabled=False", "model.ot.solver=newton", "model.layers=(1, 3)"]
    ) == {
        "model.ot.epsilon": 0.1,
        "model.ot.enabled": False,
        "model.ot.solver": "newton",
        "model.layers": (1, 3),
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        results.overrides_of(["model.ot.epsilon"])
