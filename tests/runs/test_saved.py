"""Reading a run back (`zegot_jax.runs.saved`): params alone, no optimizer, both layouts."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from inference_fixtures import save_run, smoke_config

from zegot_jax.runs import checkpoint as ckpt_lib
from zegot_jax.runs import saved
from zegot_jax.train import optim, step

OLD_RUN = Path(__file__).resolve().parent / "old_layout_run"  # saved by commit 6f2c6e6


def _abs_sum(tree) -> float:
    return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(tree)))


def test_a_run_saved_in_the_old_one_item_layout_still_loads(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)  # orbax may write metadata beside what it reads
    config = ckpt_lib.saved_config(str(run))
    assert config.train.num_steps == 3
    parts, params = saved.trained_params(config, str(run))
    leaves = jax.tree.leaves(params)
    assert len(leaves) == 7 and sum(x.size for x in leaves) == 2610
    assert _abs_sum(params) == pytest.approx(664.1904296875, rel=1e-7)  # the README's figure
    assert jax.tree.structure(params) == jax.tree.structure(parts.params)
    # resuming an old run reads its whole train state too
    ckpt = ckpt_lib.Checkpointer(str(run), async_save=False, create=False)
    try:
        tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
        state, _, _ = ckpt.restore(ckpt_lib.abstract(step.init_state(parts.params, tx, 0)))
    finally:
        ckpt.close()
    assert int(state["step"]) == 0  # save_run saves a fresh train state at step 3
    assert _abs_sum(state["params"]) == _abs_sum(params) and "opt_state" in state


def test_params_are_an_item_of_their_own_read_without_an_optimizer(tmp_path, tiny_clip):
    config = smoke_config()
    parts = save_run(str(tmp_path), config, tiny_clip, shift=0.5)
    step_dir = Path(ckpt_lib.directory(str(tmp_path))) / str(config.train.num_steps)
    assert {ckpt_lib.PARAMS, ckpt_lib.TRAIN_STATE} <= {p.name for p in step_dir.iterdir()}
    assert not (step_dir / ckpt_lib.OLD_STATE).exists()
    _, params = saved.trained_params(config, str(tmp_path))
    np.testing.assert_allclose(_abs_sum(params), _abs_sum(parts.params), rtol=1e-7)


def test_check_run_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        saved.check_run(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="checkpoints/ folder"):
        saved.check_run(tmp_path)
