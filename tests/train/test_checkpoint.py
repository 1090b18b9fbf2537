"""Damaged checkpoints: named with their step and file; a resume falls back to an intact step."""

from pathlib import Path

import jax
import pytest
from inference_fixtures import smoke_config

from zegot_jax.evaluation import run as run_lib
from zegot_jax.train import checkpoint as ckpt_lib
from zegot_jax.train import optim
from zegot_jax.train import state as state_lib
from zegot_jax.train import step as step_lib


@pytest.fixture
def damaged(tmp_path, tiny_clip):
    """A workdir with intact step 2 and step 3 whose array files are cut in half."""
    config = smoke_config()
    parts = state_lib.split_model(state_lib.build_model(config, tiny_clip))
    tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
    state = step_lib.init_state(parts.params, tx, config.seed)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    for step in (2, 3):
        ckpt.save(step, state, {"step": step}, config)
    ckpt.close()
    for f in (tmp_path / "checkpoints" / "3" / "state").rglob("d/*"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return str(tmp_path), config, state


def test_a_damaged_step_is_named_with_its_file(damaged):
    workdir, config, _ = damaged
    with pytest.raises(ValueError) as info:
        run_lib.load_trained(config, workdir)
    message = str(info.value)
    assert message.startswith("Checkpoint step 3: ") and "/checkpoints/3/state/" in message
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
    assert (Path(workdir) / "checkpoints" / "3" / "state").is_dir()  # left where it was


def test_an_earlier_set_aside_step_is_kept(damaged):
    workdir, _, state = damaged
    earlier = Path(workdir) / "corrupt_checkpoints" / "3"
    earlier.mkdir(parents=True)
    (earlier / "old").write_text("from an earlier fault")
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    step, _ = ckpt.restore_intact(ckpt_lib.abstract(jax.device_put(state)))
    ckpt.close()
    assert step == 2 and (earlier / "old").read_text() == "from an earlier fault"
    assert (Path(workdir) / "corrupt_checkpoints" / "3-2" / "state").is_dir()
