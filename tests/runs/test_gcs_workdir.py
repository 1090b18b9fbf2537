"""A run in a bucket, through the real entry points, against the test run's GCS server.

`train.py`, `evaluate.py`, `zegot-jax segment`, `Segmenter.from_run` and `prepare` are pointed at
`gs://` paths of the one fake-gcs-server of the test run (`tests/gcs_server.py`); the clients
reach it through their standard variables only. Each test checks that the run's artefacts are
objects in the bucket and that no local folder named `gs:` appeared.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import pytest
from data import fakes
from inference_fixtures import random_image, save_run, smoke_config

from zegot_jax import clip as clip_lib
from zegot_jax import inference, storage
from zegot_jax.configs import synthetic
from zegot_jax.data import prepare
from zegot_jax.data.builders import voc
from zegot_jax.runs import checkpoint as ckpt_lib
from zegot_jax.runs import saved
from zegot_jax.train import loop

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = [
    f"--config={ROOT}/configs/synthetic.py:smoke",
    "--config.train.num_steps=60",
    "--config.train.checkpoint_every=5",
    "--config.eval.figure=True",
]


def _train(workdir: str, *args: str, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs a command to its end; it must succeed."""
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _objects(prefix: str) -> list[str]:
    """Every object under gs:// `prefix`, relative to it."""
    fs = storage._gcsfs()
    root = prefix[len("gs://") :].rstrip("/")
    return sorted(p[len(root) + 1 :] for p in fs.find(root))


def _steps(workdir: str) -> list[int]:
    return sorted(int(n) for n in storage.listdir(ckpt_lib.directory(workdir)) if n.isdigit())


def _no_local_gs(*folders: Path) -> None:
    for folder in folders:
        assert not any(p.name.startswith("gs:") for p in folder.rglob("*")), folder


@pytest.mark.slow
def test_a_bucket_run_trains_resumes_is_refused_evaluated_and_segmented(gcs, tmp_path):
    """The synthetic smoke config trained into a bucket, as a pod user runs it.

    SIGKILLed after a checkpoint and refused a second training meanwhile, resumed to the end by the
    same command, then evaluated and segmented from the bucket (one test: the run is shared by
    every check).
    """
    bucket = gcs.bucket("zegot-runs")
    workdir = f"{bucket}/synthetic/smoke"
    first = _train(workdir, *SYNTHETIC, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not _steps(workdir) or max(_steps(workdir)) < 5:
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared in the bucket"
        time.sleep(0.2)
    with pytest.raises(ValueError, match="is in use by another training") as refused:
        loop.train(synthetic.get_config("smoke"), workdir)  # what train.py calls, in this process
    assert "heartbeat" in str(refused.value) and first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = max(_steps(workdir))
    assert killed_at < 60, "the run ended before it was killed: nothing resumed"
    out, err = _finish(_train(workdir, *SYNTHETIC, cwd=tmp_path))
    assert "taking over the lock" in err and "no longer running on this host" in err
    objects = _objects(workdir)
    for name in ("metrics.jsonl", "results.md", "results.json", "predictions.png"):
        assert name in objects, objects
    assert any(o.startswith("tensorboard/events.out.tfevents") for o in objects)
    assert "train.lock" not in objects  # released at the end
    assert _steps(workdir)[-1] == 60
    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 61))  # each step once
    assert "hiou" in rows[-1] and "trained" in out
    # The synthetic config scores the training-free templates beside the trained model (this run
    # is the suite's end-to-end run of that config).
    assert {"training_free_miou_seen", "training_free_miou_unseen", "training_free_hiou"} <= set(rows[-1])
    assert rows[-1]["seen_penalty"] == 0.1 and "training-free" in out
    assert "training-free" in storage.read_text(f"{workdir}/results.md")
    _evaluated_and_segmented(bucket, workdir, tmp_path)
    _no_local_gs(tmp_path, ROOT)


def _evaluated_and_segmented(bucket: str, workdir: str, tmp_path: Path) -> None:
    _run(
        sys.executable,
        str(ROOT / "evaluate.py"),
        f"--config={ROOT}/configs/synthetic.py:smoke",
        f"--checkpoint={workdir}",
        f"--out={bucket}/eval",
        cwd=tmp_path,
    )
    assert {"results.md", "results.json"} <= set(_objects(f"{bucket}/eval"))
    PIL.Image.fromarray(random_image(48, 64)).save(tmp_path / "photo.png")
    classes = "tomato,grape,grass,sky"
    _run(
        str(Path(sys.executable).parent / "zegot-jax"),
        "segment",
        str(tmp_path / "photo.png"),
        "--run",
        workdir,
        "--classes",
        classes,
        "--out",
        f"{bucket}/segmented",
        cwd=tmp_path,
    )
    assert set(_objects(f"{bucket}/segmented")) == {
        "photo.json",
        "photo_labels.png",
        "photo_overlay.png",
        "photo_prompts.png",
    }
    result = inference.Segmenter.from_run(workdir).segment(tmp_path / "photo.png", classes.split(","))
    (tmp_path / "labels.png").write_bytes(storage.read_bytes(f"{bucket}/segmented/photo_labels.png"))
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "labels.png")), result.label_map)


@pytest.mark.slow
def test_data_weights_and_init_from_in_a_bucket(gcs, tmp_path, tiny_clip):
    """Data, weights and `init_from` in a bucket, then a damaged step set aside there.

    A fake VOC prepared into a gs:// data_dir, CLIP weights read from gs://, `init_from` a gs://
    run; then the run's damaged latest step is set aside in the bucket.
    """
    bucket = gcs.bucket("zegot-data")
    fakes.fake_voc(tmp_path / "raw", voc.voc_palette())
    prepared = ["--dataset=voc", f"--manual_dir={tmp_path / 'raw'}", f"--data_dir={bucket}/tfds"]
    assert prepare.main([*prepared, "--allow_partial"]) == 0  # the command, in this process
    assert any(o.endswith("dataset_info.json") for o in _objects(f"{bucket}/tfds"))
    clip_lib.save_safetensors(tiny_clip, tmp_path / "tiny.safetensors")
    storage.write_bytes(f"{bucket}/clip/tiny.safetensors", (tmp_path / "tiny.safetensors").read_bytes())
    config = smoke_config()
    source = f"{bucket}/runs/inductive"
    parts = save_run(source, config, tiny_clip, shift=0.25)
    workdir = f"{bucket}/runs/from_bucket"
    _finish(
        _train(
            workdir,
            f"--config={ROOT}/configs/voc.py:smoke",
            "--config.data.source=tfds",
            f"--config.data.data_dir={bucket}/tfds",
            "--config.data.eval_max_images=1",
            f"--config.clip.weights={bucket}/clip/tiny.safetensors",
            f"--config.train.init_from={source}",
            cwd=tmp_path,
        )
    )
    saved_config = ckpt_lib.saved_config(workdir)
    assert saved_config.clip.weights == f"{bucket}/clip/tiny.safetensors"
    start = ckpt_lib.Checkpointer(workdir, async_save=False, create=False)
    assert start.latest_step() == config.train.num_steps
    start.close()
    _, params = saved.trained_params(saved_config, workdir)
    assert not np.allclose(jax.tree.leaves(params)[0], jax.tree.leaves(parts.params)[0])
    # The latest step damaged: set aside under corrupt_checkpoints/ in the bucket, not deleted.
    latest = _steps(workdir)[-1]
    for name in _objects(f"{ckpt_lib.directory(workdir)}/{latest}/params"):
        if "/d/" in f"/{name}":
            path = f"{ckpt_lib.directory(workdir)}/{latest}/params/{name}"
            storage.write_bytes(path, storage.read_bytes(path)[:8])
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    state = jax.device_put(_train_state(saved_config, tiny_clip))
    step, _ = ckpt.restore_intact(ckpt_lib.abstract(state))
    ckpt.close()
    assert step < latest and latest not in _steps(workdir)
    assert any(o.startswith(f"{latest}/params/") for o in _objects(f"{workdir}/corrupt_checkpoints"))
    _no_local_gs(tmp_path, ROOT)


def _train_state(config, clip):
    from zegot_jax.models import build, functional  # noqa: PLC0415
    from zegot_jax.train import optim, step  # noqa: PLC0415

    parts = functional.split_model(build.build_model(config, clip))
    tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
    return step.init_state(parts.params, tx, config.seed)


def test_other_schemes_and_missing_buckets_are_one_line_at_launch(gcs, tmp_path):
    config = smoke_config()
    with pytest.raises(
        ValueError,
        match=r"^s3://b/run: s3:// storage is not supported; use a "
        r"local path or gs://BUCKET/PATH\.$",
    ):
        loop.train(config, "s3://b/run")
    with pytest.raises(FileNotFoundError, match=r"bucket no-such-bucket does not exist"):
        loop.train(config, "gs://no-such-bucket/run")
    with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
        saved.check_run(f"{gcs.bucket('zegot-empty')}/nothing")
    _no_local_gs(tmp_path, ROOT)


def test_gs_without_the_gcs_packages_names_the_install_line(monkeypatch):
    monkeypatch.setattr(storage, "_find", lambda module: None)
    with pytest.raises(
        ImportError,
        match=r"needs gcsfs and google-cloud-storage: pip install "
        r"'zegot-jax\[gcs\]'$",
    ):
        storage.check_writable("gs://b/run", "--workdir")
    assert os.environ.get("STORAGE_EMULATOR_HOST")  # the server is there: only the packages miss
