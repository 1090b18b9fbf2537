"""Every config loads, rejects typos at launch, and runs end to end at its ':smoke' size."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from zegot_jax.train import loop

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["voc", "context", "coco", "synthetic"]


def _load(name, arg=None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "transductive", "supervised", "smoke"])
def test_configs_load(name, arg):
    config = _load(name, arg)
    assert config.train.global_batch_size > 0
    if arg == "transductive":
        assert config.data.label_mode == "transductive"
        assert config.eval.seen_penalty == 0.0


def test_unknown_variant_fails():
    with pytest.raises(ValueError, match="Unknown config variant"):
        _load("voc", "transductiv")


def _train(args, workdir, timeout=600):
    cmd = [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_override_typo_fails_at_launch(tmp_path):
    result = _train(["--config=configs/voc.py:smoke", "--config.model.num_promts=3"], tmp_path)
    assert result.returncode == 1
    assert 'Did you mean "num_prompts"' in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = _train(["--config=configs/voc.py:smoke", "--config.model.num_prompts=abc"], tmp_path)
    assert result.returncode != 0
    assert "num_prompts" in result.stderr
    result = _train(["--config=configs/vocc.py"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot load --config=configs/vocc.py" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        "voc:smoke",
        "context:smoke",
        "coco:smoke",
        "voc:transductive,smoke",
        "coco:supervised,smoke",
    ],
)
def test_smoke_runs_every_config(tmp_path, spec):
    # The synthetic config's end-to-end run is tests/runs/test_gcs_workdir.py's (in a bucket).
    # In process (train.py's flags and exit statuses are tested in test_loop.py and above).
    name, arg = spec.split(":")
    config = _load(name, arg)
    if spec == "voc:smoke":
        config.train.profile_steps = (2, 3)
    summary = loop.train(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for r in train_rows:
        assert {"loss", "learning_rate", "grad_norm", "images_per_s", "host_rss_gib"} <= set(r)
        assert r["mfu"] is None and r["device_memory_gib"] is None  # a CPU: no peak, no stats
    # Step 1 follows compilation (timed once) and warms up: the steady figures start at step 2.
    assert train_rows[0]["compile_time_s"] > 0 and train_rows[0]["step_time_s"] is None
    for r in train_rows[1:]:
        assert "compile_time_s" not in r and r["step_time_s"] > 0 and r["tflops_per_device"] > 0
        assert r["images_per_s"] == pytest.approx(config.train.global_batch_size / r["step_time_s"])
    assert rows[-1]["eval_time_s"] > 0
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == (spec == "voc:smoke")
    assert {"miou_seen", "miou_unseen", "hiou", "pixel_acc", "per_class_iou"} <= set(rows[-1])
    assert rows[-1]["per_class_iou"] == summary["per_class_iou"]
    assert (tmp_path / "results.md").exists()
