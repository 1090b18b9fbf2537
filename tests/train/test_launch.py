"""What `train` refuses before it builds a model or writes a file (in process, no training)."""

import os
import subprocess
import sys

import pytest
from inference_fixtures import save_run, smoke_config

from zegot_jax.train import launch, loop, workdir_lock


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
    assert launch.config_changes({"train": {"num_steps": 3}, "gone": 1}, config) == []


def test_a_busy_workdir_names_the_other_process(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / workdir_lock.LOCK_NAME).write_text(
            f'{{"pid": {other.pid}, "host": "{os.uname().nodename}", "started": "then"}}')
        with pytest.raises(ValueError, match=f"in use by another training \\(pid {other.pid} on"):
            loop.train(smoke_config(), str(tmp_path / "run"))
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / workdir_lock.LOCK_NAME).write_text(
        f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}"}}')
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
