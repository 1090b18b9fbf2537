"""What `train` refuses before it builds a model or writes a file (in process, no training)."""

import contextlib
import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from inference_fixtures import save_run, smoke_config

from zegot_jax.configs import checks as config_checks
from zegot_jax.data.setup import DataSetup
from zegot_jax.runs import workdir_lock
from zegot_jax.train import launch, loop
from zegot_jax.train.metric_writer import MetricWriter


def test_bad_values_stop_before_the_workdir_exists(tmp_path):
    config = smoke_config()
    config.train.keep_checkpoints = 0
    config.optim.learning_rate = -1e-3
    with pytest.raises(ValueError) as info:
        loop.train(config, str(tmp_path / "run"))
    assert "train.keep_checkpoints=0" in str(info.value)
    assert "optim.learning_rate=-0.001" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_file_as_workdir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        loop.train(smoke_config(), str(tmp_path / "file"))


def test_missing_init_from_creates_nothing(tmp_path):
    config = smoke_config()
    config.train.init_from = str(tmp_path / "typo")
    with pytest.raises(FileNotFoundError, match="train.init_from=.* holds no checkpoint"):
        loop.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "typo").exists() and not (tmp_path / "run").exists()


def test_missing_dataset_names_the_prepare_command(tmp_path):
    config = smoke_config()
    config.data.source = "tfds"
    config.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="python -m zegot_jax.data.prepare --dataset=voc"):
        loop.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_clip):
    workdir = str(tmp_path_factory.mktemp("saved"))
    save_run(workdir, smoke_config(), tiny_clip)
    return workdir


def test_resume_refuses_a_changed_model_or_dataset(saved):
    config = smoke_config()
    config.model.ot.epsilon = 0.1
    config.data.name = "coco_stuff"
    with pytest.raises(ValueError) as info:
        launch.check_resume(config, saved)
    message = str(info.value)
    assert "model.ot.epsilon: saved 0.05, now 0.1" in message
    assert "data.name: saved 'voc', now 'coco_stuff'" in message
    assert "\n" not in message


def test_resume_may_change_the_listed_fields(saved):
    config = smoke_config()
    config.train.num_steps = 50
    config.train.log_every = 7
    config.data.num_workers = 2
    config.model.prefix_shared = not config.model.prefix_shared  # how, not what, is computed
    config.model.text_remat = not config.model.text_remat
    launch.check_resume(config, saved)
    assert config_checks.resume_changes({"train": {"num_steps": 3}, "gone": 1}, config) == []
    synthetic = importlib.import_module("configs.synthetic").get_config("smoke")
    synthetic.synthetic.eval_images = 4  # only the evaluation set's size
    assert config_checks.resume_changes({"synthetic": {"eval_images": 8}}, synthetic) == []


def test_resume_refuses_fewer_steps_than_saved(saved):
    config = smoke_config()
    config.train.num_steps = 2  # the run is saved at step 3
    with pytest.raises(
        ValueError,
        match=r"already trained to step 3.*train.num_steps=2.*"
        r"evaluate.py --checkpoint=",
    ) as info:
        launch.check_resume(config, saved)
    assert "\n" not in str(info.value)
    config.train.num_steps = 3  # the same step: nothing to train, evaluates
    launch.check_resume(config, saved)


def test_a_busy_workdir_names_the_other_process(tmp_path):
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / workdir_lock.LOCK_NAME
    holder = (
        f"import fcntl, json, os, socket, time\nfd = os.open({str(lock)!r}, os.O_RDWR | "
        "os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, json.dumps({'pid': "
        "os.getpid(), 'host': socket.gethostname(), 'started': 'then'}).encode())\n"
        "print(flush=True)\ntime.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    try:
        other.stdout.readline()  # it holds the lock
        with pytest.raises(
            ValueError, match=f"in use by another training \\(pid {other.pid} on.*kill {other.pid}"
        ):
            loop.train(smoke_config(), str(tmp_path / "run"))
    finally:
        other.kill()
        other.wait()
    workdir_lock.release(workdir_lock.acquire(str(tmp_path / "run")))  # free once it is gone


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / workdir_lock.LOCK_NAME).write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}"}}')
    with workdir_lock.hold(str(tmp_path)):
        assert f'"pid": {os.getpid()}' in (tmp_path / workdir_lock.LOCK_NAME).read_text()
        assert "taking over the lock" in capsys.readouterr().err
        with pytest.raises(ValueError, match=f"pid {os.getpid()}"):  # a second holder
            workdir_lock.acquire(str(tmp_path))
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / workdir_lock.LOCK_NAME).write_text('{"pid": 1, "host": "elsewhere"}')
    with pytest.raises(ValueError, match="host elsewhere.*delete"):
        workdir_lock.acquire(str(tmp_path))


def _stale_lock(directory):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (directory / workdir_lock.LOCK_NAME).write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}"}}')


def _race(workdir: str, starts: int) -> list:
    """`starts` threads call `acquire` at the same moment; returns the locks they got."""
    barrier, held = threading.Barrier(starts), []

    def attempt():
        barrier.wait()
        with contextlib.suppress(ValueError):
            held.append(workdir_lock.acquire(workdir))

    threads = [threading.Thread(target=attempt) for _ in range(starts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return held


def test_racing_starts_on_a_stale_lock_give_one_holder(tmp_path):
    for _ in range(30):
        _stale_lock(tmp_path)  # a dead pid on this host: each start used to delete it
        held = _race(str(tmp_path), 3)
        assert len(held) == 1
        workdir_lock.release(held[0])


def test_an_empty_or_unwritable_lock_never_blocks(tmp_path, monkeypatch, capsys):
    (tmp_path / workdir_lock.LOCK_NAME).write_text("")  # a full disk left it empty
    workdir_lock.release(workdir_lock.acquire(str(tmp_path)))

    def full_disk(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    held = workdir_lock.acquire(str(tmp_path))
    assert "could not write" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(ValueError, match="in use by another training") as info:
        workdir_lock.acquire(str(tmp_path))
    assert "None" not in str(info.value) and "fuser" in str(info.value)
    workdir_lock.release(held)
    workdir_lock.release(workdir_lock.acquire(str(tmp_path)))


def test_a_live_pid_that_does_not_hold_the_lock_does_not_block(tmp_path):
    # A lock file naming a live process (a pid reused after a reboot) that holds no OS lock.
    (tmp_path / workdir_lock.LOCK_NAME).write_text(
        f'{{"pid": 1, "host": "{os.uname().nodename}", "started": "last year"}}'
    )
    held = workdir_lock.acquire(str(tmp_path))
    assert f'"pid": {os.getpid()}' in (tmp_path / workdir_lock.LOCK_NAME).read_text()
    workdir_lock.release(held)


def test_init_from_another_model_size_says_the_shapes_differ(saved, tmp_path):
    config = smoke_config()
    config.model.num_prompts = 3  # the saved run has 2
    config.train.init_from = saved
    with pytest.raises(
        ValueError,
        match=r"holds parameters of other shapes than this model's "
        r"\(saved \(2, .*needed \(3, .*model.num_prompts",
    ) as info:
        loop.train(config, str(tmp_path / "run"))
    assert "Delete" not in str(info.value) and "corrupt" not in str(info.value)
    assert not (tmp_path / "run").exists()  # no empty checkpoints/ (nor workdir) left behind
    assert (Path(saved) / "checkpoints" / "3").is_dir()


def test_sigterm_during_the_final_evaluation_is_a_preemption(tmp_path, monkeypatch, tiny_clip):
    # A run saved at its last step: train goes straight to the final evaluation.
    workdir, config = tmp_path / "run", smoke_config()
    iterator = DataSetup.from_config(config).train_iterator(2, seed=config.seed)
    save_run(str(workdir), config, tiny_clip, data_state=iterator.get_state())

    def evaluate_until_preempted(*_, **__):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(loop, "_evaluate", evaluate_until_preempted)
    previous = signal.getsignal(signal.SIGTERM)
    assert loop.train(smoke_config(), str(workdir)) == {"preempted_at": 3}
    assert signal.getsignal(signal.SIGTERM) == previous
    assert not (workdir / workdir_lock.LOCK_NAME).exists()
    workdir_lock.release(workdir_lock.acquire(str(workdir)))  # free


def test_more_steps_on_resume_note_the_new_learning_rate(saved, capsys):
    config = smoke_config()
    config.train.num_steps = 50  # saved at step 3 of 3
    launch.check_resume(config, saved)
    err = capsys.readouterr().err
    assert err.startswith("note: train.num_steps changes from 3 to 50: the learning-rate schedule")
    assert "step 3 resumes at" in err and len(err.strip().splitlines()) == 1
    config.train.num_steps = 3
    launch.check_resume(config, saved)
    assert capsys.readouterr().err == ""


def test_metrics_after_the_restored_step_are_dropped(tmp_path):
    rows = [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo'
    )  # cut by a kill
    writer = MetricWriter(str(tmp_path), restored_step=3)
    writer.write(4, {"loss": 40.0})
    writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [*rows[:3], {"step": 4, "loss": 40.0}]


def test_a_metrics_log_that_is_a_link_is_replaced_not_written_through(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"step": 1, "loss": 1.0}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(outside)
    writer = MetricWriter(str(run), restored_step=5)
    writer.write(6, {"loss": 2.0})
    writer.close()
    assert outside.read_text() == '{"step": 1, "loss": 1.0}\n'  # nothing written outside the run
    assert not (run / "metrics.jsonl").is_symlink()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 6]
