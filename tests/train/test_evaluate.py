"""`evaluate.py` on a saved run: same dataset, and cross-dataset (another vocabulary)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_evaluate_a_run_in_domain_and_cross_dataset(tmp_path):
    run = tmp_path / "run"
    _python("train.py", "--config=configs/voc.py:smoke", f"--workdir={run}")
    trained = json.loads((run / "results.json").read_text())

    same = tmp_path / "same"
    _python("evaluate.py", "--config=configs/voc.py:smoke", f"--checkpoint={run}", f"--out={same}")
    again = json.loads((same / "results.json").read_text())
    # The saved run, re-evaluated on the same images, scores exactly as at the end of training.
    assert again["per_class_iou"] == trained["per_class_iou"]
    assert again["num_images"] == trained["num_images"] == 2

    cross = tmp_path / "cross"
    _python("evaluate.py", "--config=configs/ade.py:smoke", f"--checkpoint={run}", f"--out={cross}")
    ade = json.loads((cross / "results.json").read_text())
    assert len(ade["per_class_iou"]) == 150
    assert "Results: ade20k" in (cross / "results.md").read_text()


def test_missing_run_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "evaluate.py", "--config=configs/voc.py:smoke",
                             f"--checkpoint={tmp_path / 'nothing'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "No checkpoint" in result.stderr
