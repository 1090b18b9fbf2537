"""Damaged checkpoints: named with their step and file; a resume falls back to an intact step."""

import sys
from pathlib import Path

import jax
import pytest
from inference_fixtures import smoke_config

from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.runs import checkpoint as ckpt_lib
from zegot_jax.runs import saved
from zegot_jax.train import optim
from zegot_jax.train import step as step_lib


@pytest.fixture
def damaged(tmp_path, tiny_clip):
    """A workdir with intact step 2 and step 3 whose parameter files are cut in half."""
    config = smoke_config()
    parts = functional.split_model(build_lib.build_model(config, tiny_clip))
    tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
    state = step_lib.init_state(parts.params, tx, config.seed)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    for step in (2, 3):
        ckpt.save(step, state, {"step": step}, config)
    ckpt.close()
    for f in (tmp_path / "checkpoints" / "3" / ckpt_lib.PARAMS).rglob("d/*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return str(tmp_path), config, state


def test_a_damaged_step_is_named_with_its_file(damaged):
    workdir, config, _ = damaged
    with pytest.raises(ValueError) as info:
        saved.trained_params(config, workdir)
    message = str(info.value)
    assert message.startswith("Checkpoint step 3: ") and "/checkpoints/3/params/" in message
    assert "tensorstore_spec" not in message and len(message) < 500


def test_resume_falls_back_to_the_previous_intact_step(damaged, capsys):
    workdir, _, state = damaged
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    step, (_, data_state, _) = ckpt.restore_intact(ckpt_lib.abstract(jax.device_put(state)))
    ckpt.close()
    assert (step, data_state) == (2, {"step": 2})
    err = capsys.readouterr().err
    assert "checkpoint step 3:" in err and "resuming from step 2" in err
    assert (Path(workdir) / "corrupt_checkpoints" / "3").is_dir()
    assert not (Path(workdir) / "checkpoints" / "3").exists()


def test_reading_a_config_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        ckpt_lib.read_config(str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()


def test_setting_aside_never_goes_through_a_link(damaged):
    workdir, _, state = damaged
    outside = Path(workdir).parent / f"{Path(workdir).name}-outside"
    (outside / "3").mkdir(parents=True)
    (outside / "3" / "precious").write_text("keep me")
    (Path(workdir) / "corrupt_checkpoints").symlink_to(outside)
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    with pytest.raises(ValueError, match="corrupt_checkpoints is a link or a file"):
        ckpt.restore_intact(ckpt_lib.abstract(jax.device_put(state)))
    ckpt.close()
    assert (outside / "3" / "precious").read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["3"]
    assert (Path(workdir) / "checkpoints" / "3" / ckpt_lib.PARAMS).is_dir()  # left where it was


def test_an_earlier_set_aside_step_is_kept(damaged):
    workdir, _, state = damaged
    earlier = Path(workdir) / "corrupt_checkpoints" / "3"
    earlier.mkdir(parents=True)
    (earlier / "old").write_text("from an earlier fault")
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    step, _ = ckpt.restore_intact(ckpt_lib.abstract(jax.device_put(state)))
    ckpt.close()
    assert step == 2 and (earlier / "old").read_text() == "from an earlier fault"
    assert (Path(workdir) / "corrupt_checkpoints" / "3-2" / ckpt_lib.PARAMS).is_dir()


def test_a_full_disk_is_one_line_naming_the_resume_step(damaged, monkeypatch):
    workdir, config, state = damaged
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)

    def full(*_, **__):
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to '
            "write 5910 bytes to file 19: No space left on device [os_error_code=28]"
        )

    monkeypatch.setattr(ckpt.manager, "save", full)
    monkeypatch.setattr(ckpt.manager, "wait_until_finished", full)
    with pytest.raises(
        ValueError,
        match=r"^Could not write a checkpoint in .*/checkpoints: no "
        r"space left on device\. Free some space .* resumes "
        r"from step 3, the last complete checkpoint\.$",
    ):
        ckpt.save(4, state, {"step": 4}, config)
    ckpt.close()  # the failure was reported: not raised again on the way out
    monkeypatch.undo()


def test_stderr_keeps_all_but_closed_loop_tracebacks(monkeypatch):
    import io
    import threading

    from zegot_jax.runs import orbax_errors

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    orbax_errors.quiet_after_failure()
    noise = [
        "Traceback (most recent call last):\n",
        '  File "base_events.py", line 806, in call_soon_threadsafe\n',
        "    self._check_closed()\n",
        "RuntimeError",
        ": Event loop is closed\n",
    ]
    pieces = [
        noise,
        list(noise),
        ['Traceback (most recent call last):\n  File "a.py"\n', "ValueError: real\n"],
    ]

    def write(parts):
        for part in parts:
            sys.stderr.write(part)

    threads = [threading.Thread(target=write, args=(p,)) for p in pieces]
    sys.stderr.write("train:  50%|#####\r")  # a progress bar: no newline, shown at once
    assert stream.getvalue() == "train:  50%|#####\r"
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sys.stderr.write("error: one line\n")
    assert stream.getvalue() == (
        "train:  50%|#####\rTraceback (most recent call last):\n"
        '  File "a.py"\nValueError: real\nerror: one line\n'
    )
