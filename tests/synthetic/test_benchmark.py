"""`zegot_jax.synthetic.benchmark`: variants are the base config plus overrides, one row each."""

import pytest

from configs import common
from zegot_jax.synthetic import benchmark


def _fake_train(seen):
    def train(config, workdir):
        seen.append((config, workdir))
        return {"miou_seen": 0.5, "miou_unseen": config.model.ot.epsilon, "hiou": 0.1,
                "miou": 0.3, "pixel_acc": 0.9, "per_class_iou": {}}
    return train


def test_compare_variants_applies_overrides(tmp_path):
    base = common.get_config()
    seen = []
    rows = benchmark.compare_variants(
        base, {"OT eps=0.05": {}, "OT eps=0.2": {"model.ot.epsilon": 0.2},
               "no OT": {"model.ot.enabled": False}}, str(tmp_path), train_fn=_fake_train(seen))
    assert [r["variant"] for r in rows] == ["OT eps=0.05", "OT eps=0.2", "no OT"]
    assert [r["miou_unseen"] for r in rows] == [0.05, 0.2, 0.05]
    dirs = ("ot-eps-0.05", "ot-eps-0.2", "no-ot")
    assert [w for _, w in seen] == [str(tmp_path / d) for d in dirs]
    assert seen[2][0].model.ot.enabled is False and base.model.ot.epsilon == 0.05  # base untouched
    table = benchmark.markdown_table(rows)
    assert "| OT eps=0.2 | model.ot.epsilon=0.2 | 50.0 | 20.0 |" in table
    assert "(base)" in table


def test_bad_variants_fail_before_training(tmp_path):
    seen = []
    base = common.get_config()
    with pytest.raises(KeyError, match="epsilom"):
        benchmark.compare_variants(base, {"a": {}, "b": {"model.ot.epsilom": 0.1}},
                                   str(tmp_path), train_fn=_fake_train(seen))
    with pytest.raises(KeyError, match="not a config section"):
        benchmark.compare_variants(base, {"a": {"model.otx.epsilon": 0.1}}, str(tmp_path),
                                   train_fn=_fake_train(seen))
    with pytest.raises(ValueError, match="same directory"):
        benchmark.compare_variants(base, {"No OT": {}, "no-ot": {}}, str(tmp_path),
                                   train_fn=_fake_train(seen))
    with pytest.raises(ValueError, match="No variants"):
        benchmark.compare_variants(base, {}, str(tmp_path), train_fn=_fake_train(seen))
    assert seen == []
