"""The training loop as users run it: resume after SIGKILL, SIGTERM, NaN, devices and processes.

Every run here is `train.py` in a subprocess at the ':smoke' size (tiny random CLIP, random data),
except the in-process check of the divergence message.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from inference_fixtures import smoke_config

from zegot_jax.errors import PREEMPTED_EXIT_STATUS
from zegot_jax.train import loop

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["--config=configs/voc.py:smoke", "--config.data.eval_max_images=1"]


def _cmd(workdir, *extra):
    return [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *SMOKE, *extra]


def _env(devices: int = 1, **extra):
    """The test environment with `devices` simulated CPU devices (other XLA flags kept)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "XLA_FLAGS": " ".join(flags), **extra}


def _run(workdir, *extra, env=None, timeout=300):
    result = subprocess.run(_cmd(workdir, *extra), cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env=env or _env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train_losses(workdir, *extra, env=None) -> dict[int, float]:
    _run(workdir, *extra, env=env)
    return _losses(workdir)


def _losses(workdir) -> dict[int, float]:
    """Per-step losses from metrics.jsonl (a resumed run's later rows win)."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def _checkpoint_steps(workdir) -> list[int]:
    d = Path(workdir) / "checkpoints"
    if not d.exists():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def _wait_for_checkpoint(proc, workdir, at_least, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        steps = _checkpoint_steps(workdir)
        if steps and steps[-1] >= at_least:
            return steps[-1]
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    pytest.fail("no checkpoint appeared")


LONG = ["--config.train.num_steps=60", "--config.train.checkpoint_every=5"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    reference = _train_losses(tmp_path / "ref", *LONG)
    work = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(work, *LONG), cwd=ROOT, env=_env(), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    _wait_for_checkpoint(proc, work, at_least=10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(work))
    assert killed_at < 60, "the run finished before it was killed; the test proves nothing"
    _run(work, *LONG)
    resumed = _losses(work)
    assert sorted(resumed) == sorted(reference) == list(range(1, 61))
    np.testing.assert_allclose([resumed[s] for s in range(1, 61)],
                               [reference[s] for s in range(1, 61)], rtol=1e-5)


@pytest.mark.slow
def test_sigterm_saves_and_exits_with_the_preempted_status(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, "--config.train.num_steps=100000",
                                 "--config.train.checkpoint_every=5"),
                            cwd=ROOT, env=_env(), stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, tmp_path, at_least=5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_STATUS == 75, err[-2000:]
    assert "preempted at step" in out
    assert not re.search(r"^I\d{4} ", err, re.M), "absl INFO lines at the default verbosity"
    last = max(_losses(tmp_path))
    assert _checkpoint_steps(tmp_path)[-1] == last


@pytest.mark.slow
def test_nan_stops_with_the_step_named(tmp_path):
    result = subprocess.run(_cmd(tmp_path, "--config.optim.learning_rate=1e30",
                                 "--config.train.num_steps=6"),
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode != 0
    # A huge learning rate overflows the parameters in the first update.
    assert "diverged at step 1" in result.stderr
    assert "param_norm" in result.stderr and "no checkpoint was written yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_nan_gradient_of_a_finite_loss_names_epsilon():
    # What epsilon=1e-4 gives at the smoke size (seen in a run): the loss is finite, its gradient
    # is not (the plans are hard assignments), and the update makes the parameters NaN.
    config = smoke_config()
    config.model.ot.epsilon = 1e-4
    metrics = {"loss": 1.2, "grad_norm": np.nan, "param_norm": np.nan, "ot_marginal_error": 0.0}
    with pytest.raises(FloatingPointError, match=r"diverged at step 1: grad_norm, param_norm .*"
                                                 r"model.ot.epsilon=0.0001.*raise model.ot.epsilon"):
        loop._check_finite(metrics, 1, None, config.model.ot)
    with pytest.raises(FloatingPointError, match="Lower optim.learning_rate or check the data"):
        loop._check_finite({"loss": 1.2, "grad_norm": 3.0, "param_norm": np.inf}, 1, None,
                           config.model.ot)  # a huge learning rate, not the OT


# One global batch of 8 on 1 device, 8 devices or 2 processes: the same losses.
SPLIT = ["--config.train.global_batch_size=8", "--config.train.num_steps=3"]


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    """The reference both split runs compare with (trained once per test process)."""
    return _train_losses(tmp_path_factory.mktemp("one_device"), *SPLIT)


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path, one_device_losses):
    one = one_device_losses
    eight = _train_losses(tmp_path / "eight", *SPLIT, env=_env(devices=8))
    assert sorted(eight) == sorted(one) == [1, 2, 3]
    np.testing.assert_allclose([eight[s] for s in sorted(one)], [one[s] for s in sorted(one)],
                               rtol=2e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, one_device_losses):
    one, args = one_device_losses, SPLIT
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
        procs.append(subprocess.Popen(_cmd(tmp_path / "two", *args), cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    two = _losses(tmp_path / "two")
    assert sorted(two) == sorted(one) == [1, 2, 3]
    np.testing.assert_allclose([two[s] for s in sorted(one)], [one[s] for s in sorted(one)],
                               rtol=2e-5)
