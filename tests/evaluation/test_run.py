"""`evaluate_checkpoint`'s config: the run's model settings with another dataset's data and eval."""

import pytest
from inference_fixtures import save_run

from configs import coco, synthetic
from zegot_jax.evaluation import run as run_lib
from zegot_jax.runs import saved


def test_another_datasets_config_scores_a_synthetic_run(tmp_path, tiny_clip):
    trained = synthetic.get_config("smoke")
    trained.clip.weights = "random:tiny"  # the saved config is what matters here, not the CLIP
    save_run(str(tmp_path), trained, tiny_clip)
    config = saved.run_config(coco.get_config("smoke"), str(tmp_path))
    assert config.synthetic.pretrain.to_dict() == trained.synthetic.pretrain.to_dict()
    assert (config.data.name, config.model.layers) == ("coco_stuff", (0,))


def test_an_unwritable_out_fails_before_loading(tmp_path, tiny_clip):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out .* is a file"):
        run_lib.evaluate_checkpoint(coco.get_config("smoke"), str(tmp_path), out=str(tmp_path / "file"))
