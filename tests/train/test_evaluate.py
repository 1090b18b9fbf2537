"""`evaluate.py` on a saved run: same dataset, and cross-dataset (another vocabulary)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(*args, env=None):
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
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

    # Sharded over 8 simulated devices (batches of 8, 6 of them padding), and split over two
    # processes (one image each): the same counts.
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    eight = tmp_path / "eight"
    _python(
        "evaluate.py",
        "--config=configs/voc.py:smoke",
        f"--checkpoint={run}",
        f"--out={eight}",
        "--config.eval.batch_size=3",
        env={**os.environ, "XLA_FLAGS": flags},
    )
    sharded = json.loads((eight / "results.json").read_text())
    assert sharded["per_class_iou"] == trained["per_class_iou"] and sharded["num_images"] == 2
    port, two = _free_port(), tmp_path / "two"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "evaluate.py",
                "--config=configs/voc.py:smoke",
                f"--checkpoint={run}",
                f"--out={two}",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(pid),
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            },
        )
        for pid in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    split = json.loads((two / "results.json").read_text())
    assert split["per_class_iou"] == trained["per_class_iou"] and split["num_images"] == 2

    cross = tmp_path / "cross"
    _python("evaluate.py", "--config=configs/ade.py:smoke", f"--checkpoint={run}", f"--out={cross}")
    ade = json.loads((cross / "results.json").read_text())
    assert len(ade["per_class_iou"]) == 150
    assert "Results: ade20k" in (cross / "results.md").read_text()


def test_missing_run_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "--config=configs/voc.py:smoke",
            f"--checkpoint={tmp_path / 'nothing'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "No checkpoint" in result.stderr
