"""`benchmarks/step_memory.py --smoke`: one compiled-memory row per component, overrides applied."""

import pytest
from md_tables import ROOT, run_script, tables

# ':smoke' runs 5 Sinkhorn iterations; the default solver is Newton with 10 steps, implicit.
TRAINING = [
    "image tower forward (frozen, no grad)",
    "text tower forward+backward",
    "MPOT forward+backward (sinkhorn 5, unrolled)",
    "MPOT forward+backward (newton 10, implicit)",
    "loss forward+backward (upsample, focal + dice)",
    "train step (whole, AdamW; OT newton 10, implicit)",
]
SEGMENT = ["segment forward (tower + DLFA + MPOT + upsample)", "MPOT forward (newton 10, implicit)"]


@pytest.mark.slow
def test_smoke_table_has_every_component_and_the_step_holds_the_most():
    done = run_script("step_memory.py", "--smoke", "--set", "model.num_prompts=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "N=3," in done.stdout  # the override reached the config
    (rows,) = tables(done.stdout)
    by_name = {r["component"]: r for r in rows}
    assert list(by_name) == TRAINING + SEGMENT
    assert [by_name[n]["K"] for n in TRAINING + SEGMENT] == ["", "3", "3", "3", "3", "3", "5", "5"]
    temp = {n: float(r["temp (MiB)"].replace(",", "")) for n, r in by_name.items()}
    assert all(t >= 0 for t in temp.values()) and temp[TRAINING[-1]] > 0  # implicit MPOT: ~0.0
    step = temp[TRAINING[-1]]
    in_step = [n for n in TRAINING[:-1] if "unrolled" not in n]  # the step runs the default OT
    assert all(temp[n] <= step for n in in_step) and by_name[TRAINING[-1]]["temp / step temp"] == "100%"
    largest = max(in_step, key=temp.get)
    assert f"Largest temp among the step's parts: {largest} " in done.stdout


def test_an_unknown_override_fails_before_compiling():
    done = run_script("step_memory.py", "--smoke", "--set", "model.ot.epsilom=0.1")
    assert done.returncode != 0 and "epsilom" in done.stderr


def test_overrides_are_literals_or_strings(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import harness  # noqa: PLC0415

    assert harness.parse_overrides(
        ["model.ot.backward=unrolled", "clip.dtype=bfloat16", "model.layers=(1, 2)", "model.ot.epsilon=0.1"]
    ) == {
        "model.ot.backward": "unrolled",
        "clip.dtype": "bfloat16",
        "model.layers": (1, 2),
        "model.ot.epsilon": 0.1,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        harness.parse_overrides(["model.ot.backward"])
