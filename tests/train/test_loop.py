"""The training loop as users run it: resume after SIGKILL, SIGTERM, NaN, devices and processes.

Two processes: SIGTERM to one of them, and one lost (SIGKILL).

Every run here is `train.py` in a subprocess at the ':smoke' size (tiny random CLIP, random data),
except the in-process check of the divergence message.
"""

import fcntl
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

from zegot_jax import storage
from zegot_jax.errors import LOST_PEER_EXIT_STATUS, PREEMPTED_EXIT_STATUS
from zegot_jax.train import loop

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["--config=configs/voc.py:smoke", "--config.data.eval_max_images=1"]


def _cmd(workdir, *extra):
    return [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *SMOKE, *extra]


def _env(devices: int = 1, **extra):
    """The test environment with `devices` simulated CPU devices (other XLA flags kept)."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "XLA_FLAGS": " ".join(flags), **extra}


def _run(workdir, *extra, env=None, timeout=300):
    result = subprocess.run(
        _cmd(workdir, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env or _env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _train_losses(workdir, *extra, env=None) -> dict[int, float]:
    _run(workdir, *extra, env=env)
    return _losses(workdir)


def _losses(workdir) -> dict[int, float]:
    """Per-step losses from metrics.jsonl (a resumed run's later rows win)."""
    out = {}
    for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines():
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


# One global batch of 8 on 1 device, 8 devices or 2 processes: the same losses. Long enough for a
# SIGTERM sent after step 1 to be agreed mid-run in the two-process test (JAX's notifier polls
# once a second; a step took 0.03-0.1 s here).
SPLIT = [
    "--config.train.global_batch_size=8",
    "--config.train.num_steps=80",
    "--config.train.checkpoint_every=40",
]
STEPS = list(range(1, 81))


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, one_device_losses):
    # The uninterrupted run is the shared one-device reference: checkpoint_every does not change
    # what trains, only when it is saved.
    work, every_5 = tmp_path / "killed", "--config.train.checkpoint_every=5"
    proc = subprocess.Popen(
        _cmd(work, *SPLIT, every_5),
        cwd=ROOT,
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    _wait_for_checkpoint(proc, work, at_least=10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(work))
    assert killed_at < STEPS[-1], "the run finished before it was killed; the test proves nothing"
    _run(work, *SPLIT, every_5)
    resumed = _losses(work)
    assert sorted(resumed) == sorted(one_device_losses) == STEPS
    np.testing.assert_allclose([resumed[s] for s in STEPS], [one_device_losses[s] for s in STEPS], rtol=1e-5)


@pytest.mark.slow
def test_sigterm_saves_and_exits_with_the_preempted_status(tmp_path):
    proc = subprocess.Popen(
        _cmd(tmp_path, "--config.train.num_steps=100000", "--config.train.checkpoint_every=5"),
        cwd=ROOT,
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
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
    result = subprocess.run(
        _cmd(tmp_path, "--config.optim.learning_rate=1e30", "--config.train.num_steps=6"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
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
    with pytest.raises(
        FloatingPointError,
        match=r"diverged at step 1: grad_norm, param_norm .*"
        r"model.ot.epsilon=0.0001.*raise model.ot.epsilon",
    ):
        loop._check_finite(metrics, 1, None, config.model.ot)
    with pytest.raises(FloatingPointError, match="Lower optim.learning_rate or check the data"):
        loop._check_finite(
            {"loss": 1.2, "grad_norm": 3.0, "param_norm": np.inf}, 1, None, config.model.ot
        )  # a huge learning rate, not the OT


def _once_per_test_run(name: str, train) -> dict[int, float]:
    """`train(workdir)`'s losses, trained by the first pytest-xdist worker that asks.

    The others wait for it and read them (`ZEGOT_TEST_RUN_DIR`, which every worker shares).
    """
    shared = Path(os.environ["ZEGOT_TEST_RUN_DIR"])
    done = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            losses = train(shared / name)
            done.write_text(json.dumps(losses))
    return {int(step): loss for step, loss in json.loads(done.read_text()).items()}


@pytest.fixture(scope="module")
def one_device_losses():
    """The reference the split runs and the SIGKILL resume compare with (trained once per run)."""
    return _once_per_test_run("one_device", lambda work: _train_losses(work, *SPLIT))


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path, one_device_losses):
    one = one_device_losses
    eight = _train_losses(tmp_path / "eight", *SPLIT, env=_env(devices=8))
    assert sorted(eight) == sorted(one) == STEPS
    np.testing.assert_allclose([eight[s] for s in STEPS], [one[s] for s in STEPS], rtol=2e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _pair(workdir, *extra, tag: str = "", logs=None) -> list[subprocess.Popen]:
    """Two processes of one training (explicit variables, a coordinator on localhost).

    Their output goes to `logs``tag`.out<i> and .err<i> (`logs`: `workdir` unless given).
    """
    logs = workdir if logs is None else logs
    port, procs = _free_port(), []
    for pid in range(2):
        env = _env(
            JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid), JAX_COORDINATOR_ADDRESS=f"localhost:{port}"
        )
        with open(f"{logs}{tag}.out{pid}", "w") as out, open(f"{logs}{tag}.err{pid}", "w") as err:
            procs.append(
                subprocess.Popen(_cmd(workdir, *extra), cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
            )
    return procs


def _finish(procs, workdir, timeout=300, tag: str = "") -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process of `_pair`, once it ended."""
    done = []
    for pid, p in enumerate(procs):
        p.wait(timeout=timeout)
        done.append(
            (
                p.returncode,
                Path(f"{workdir}{tag}.out{pid}").read_text(),
                Path(f"{workdir}{tag}.err{pid}").read_text(),
            )
        )
    return done


def _wait_for_row(procs, workdir, step, timeout=240):
    """Waits until process 0 logged `step` (compiled and training)."""
    start, path = time.time(), Path(workdir) / "metrics.jsonl"
    while time.time() - start < timeout:
        if path.exists() and any(
            json.loads(line).get("step", 0) >= step
            for line in path.read_text().splitlines()[-3:]
            if line.strip()
        ):
            return
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"training exited early: {_finish(procs, workdir)}")
        time.sleep(0.1)
    pytest.fail(f"no metrics row for step {step}")


def _train_pair(workdir, bucket: str) -> dict[int, float]:
    """Two processes training into one gs:// workdir: one log, one lock, results written once."""
    workdir.mkdir()
    work, logs = f"{bucket}/pair/run", workdir / "run"
    for status, _, err in _finish(_pair(work, *SPLIT, logs=logs), logs):
        assert status == 0, err[-3000:]
    rows = [json.loads(line) for line in storage.read_text(f"{work}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == STEPS  # process 0's log, each step once
    names = storage.listdir(work)
    assert {"results.md", "results.json"} <= set(names) and "train.lock" not in names
    assert not list(ROOT.glob("gs:*")) and not list(workdir.rglob("gs:*"))  # nothing local
    return _losses(work)


@pytest.fixture(scope="module")
def two_process_losses(gcs):
    """An uninterrupted two-process run (the explicit variables' path), trained once per run.

    It lives in a bucket of the test run's GCS server: two processes on one gs:// workdir.
    """
    return _once_per_test_run("two_processes", lambda work: _train_pair(work, gcs.bucket("zegot-pairs")))


@pytest.mark.slow
def test_two_processes_match_one_process(one_device_losses, two_process_losses):
    one, two = one_device_losses, two_process_losses
    assert sorted(two) == sorted(one) == STEPS
    np.testing.assert_allclose([two[s] for s in STEPS], [one[s] for s in STEPS], rtol=2e-5)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_then_resumes(tmp_path, two_process_losses):
    work = tmp_path / "run"
    procs = _pair(work, *SPLIT)
    _wait_for_row(procs, work, 1)
    procs[1].send_signal(signal.SIGTERM)  # process 0 is never signalled
    results = _finish(procs, work)
    assert [status for status, _, _ in results] == [PREEMPTED_EXIT_STATUS] * 2, results
    stops = [re.findall(r"preempted at step (\d+)", out) for _, out, _ in results]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops
    stopped = int(stops[0][0])
    assert stopped < STEPS[-1], "the run ended before the SIGTERM was agreed: it proves nothing"
    assert _checkpoint_steps(work)[-1] == stopped == max(_losses(work))
    resumed = _finish(_pair(work, *SPLIT, tag=".resumed"), work, tag=".resumed")
    for status, _, err in resumed:  # the same command resumes
        assert status == 0, err[-3000:]
    resumed = _losses(work)
    assert sorted(resumed) == STEPS
    np.testing.assert_allclose([resumed[s] for s in STEPS], [two_process_losses[s] for s in STEPS], rtol=1e-5)


@pytest.mark.slow
def test_a_lost_process_ends_the_other_with_one_line(tmp_path):
    work = tmp_path / "run"
    # The default heartbeat timeout is 60 s; a short one bounds the test where no collective fails.
    procs = _pair(work, *SPLIT, "--config.distributed.heartbeat_timeout_s=10")
    _wait_for_row(procs, work, 2)
    procs[1].kill()
    procs[1].wait()
    ((status, _, err),) = _finish(procs[:1], work, timeout=120)
    assert status == LOST_PEER_EXIT_STATUS, err[-3000:]
    lines = [line for line in err.splitlines() if "lost a peer process" in line]
    assert len(lines) == 1 and lines[0].startswith("error: process 0 of 2 lost a peer"), err[-3000:]
    assert "resumes from the last complete checkpoint" in lines[0]
    assert "Traceback" not in err and "Check failure stack trace" not in err
