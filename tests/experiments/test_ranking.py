"""`zegot_jax.experiments.ranking`: variants are the base config plus overrides, one row each."""

import pytest

from configs import common
from zegot_jax.experiments import ranking


def _fake_train(seen):
    def train(config, workdir):
        seen.append((config, workdir))
        return {
            "miou_seen": 0.5,
            "miou_unseen": config.model.ot.epsilon,
            "hiou": 0.1,
            "miou": 0.3,
            "pixel_acc": 0.9,
            "per_class_iou": {},
        }

    return train


def test_compare_variants_applies_overrides(tmp_path):
    base = common.get_config()
    seen = []
    rows = ranking.compare_variants(
        base,
        {"OT eps=0.05": {}, "OT eps=0.2": {"model.ot.epsilon": 0.2}, "no OT": {"model.ot.enabled": False}},
        str(tmp_path),
        train_fn=_fake_train(seen),
    )
    assert [r["variant"] for r in rows] == ["OT eps=0.05", "OT eps=0.2", "no OT"]
    assert [r["miou_unseen"] for r in rows] == [0.05, 0.2, 0.05]
    dirs = ("ot-eps-0.05", "ot-eps-0.2", "no-ot")
    assert [w for _, w in seen] == [str(tmp_path / d) for d in dirs]
    assert seen[2][0].model.ot.enabled is False and base.model.ot.epsilon == 0.05  # base untouched
    table = ranking.markdown_table(rows)
    assert "| OT eps=0.2 | model.ot.epsilon=0.2 | 50.0 | 20.0 |" in table
    assert "(base)" in table


def test_bad_variants_fail_before_training(tmp_path):
    seen = []
    base = common.get_config()
    with pytest.raises(KeyError, match="epsilom"):
        ranking.compare_variants(
            base, {"a": {}, "b": {"model.ot.epsilom": 0.1}}, str(tmp_path), train_fn=_fake_train(seen)
        )
    with pytest.raises(KeyError, match="not a config section"):
        ranking.compare_variants(
            base, {"a": {"model.otx.epsilon": 0.1}}, str(tmp_path), train_fn=_fake_train(seen)
        )
    with pytest.raises(ValueError, match="same directory"):
        ranking.compare_variants(base, {"No OT": {}, "no-ot": {}}, str(tmp_path), train_fn=_fake_train(seen))
    with pytest.raises(ValueError, match="No variants"):
        ranking.compare_variants(base, {}, str(tmp_path), train_fn=_fake_train(seen))
    assert seen == []


class _FakeRuns:
    """What `train_seeds` returns, with a 'score' per seed in place of parameters."""

    def __init__(self, config, seeds):
        self.seeds, self.compile_s, self.train_s = tuple(seeds), 0.0, 0.0
        self.params = [config.model.ot.epsilon + s for s in seeds]

    def _replace(self, **changes):
        runs = object.__new__(_FakeRuns)
        runs.__dict__.update({**self.__dict__, **changes})
        return runs


@pytest.fixture
def fake_ranking(monkeypatch):
    """`rank_variants` with training and scoring replaced by arithmetic; logs what trained."""
    from zegot_jax.train import seeds as train_seeds

    trained = []

    def train(config, seeds):
        trained.append((config.model.ot.epsilon, tuple(seeds)))
        return _FakeRuns(config, seeds)

    def score(config, runs, *, statistics):
        del statistics
        return [
            {
                "seed": s,
                "miou_seen": p,
                "miou_unseen": p,
                "hiou": p,
                "miou": p,
                "pixel_acc": p,
                "per_class_iou": {},
                "final_loss": config.eval.seen_penalty,
            }
            for s, p in zip(runs.seeds, runs.params, strict=True)
        ]

    monkeypatch.setattr(train_seeds, "train_seeds", train)
    monkeypatch.setattr(ranking, "score_seeds", score)
    monkeypatch.setattr(ranking, "enable_compilation_cache", lambda: "")
    monkeypatch.setattr(
        ranking,
        "_select",
        lambda runs, seeds: runs._replace(
            seeds=tuple(seeds), params=[runs.params[runs.seeds.index(s)] for s in seeds]
        ),
    )
    return trained


def test_rank_variants_trains_each_variant_once_and_keeps_rows(tmp_path, fake_ranking):
    base = common.get_config()
    variants = {
        "default": {},
        "eps 0.2": {"model.ot.epsilon": 0.2},
        "free": {"model.ot.epsilon": 0.5},
        "penalty 0": {"eval.seen_penalty": 0.0},
    }
    rows = ranking.rank_variants(
        base,
        variants,
        (0, 1, 2),
        workdir=str(tmp_path),
        deterministic=("free",),
        eval_only={"penalty 0": "default"},
        log=None,
    )
    # one call per trained variant, all its seeds at once; 'penalty 0' reuses 'default'
    assert fake_ranking == [(0.05, (0, 1, 2)), (0.2, (0, 1, 2)), (0.5, (0,))]
    assert [r["seed"] for r in rows["default"]] == [0, 1, 2] and len(rows["free"]) == 1
    assert [r["hiou"] for r in rows["penalty 0"]] == [r["hiou"] for r in rows["default"]]
    assert rows["penalty 0"][0]["final_loss"] == 0.0
    assert (tmp_path / ranking.run_dir("eps 0.2", 2) / "row.json").exists()
    text = ranking.report(rows, deterministic=("free",))
    assert "| eps 0.2 - default | +15.0 [+15.0, +15.0] |" in text  # paired by seed
    line = next(r for r in text.splitlines() if r.startswith("| free - default |"))
    assert line.endswith("| 3 |")  # the deterministic run stands for every seed
    fake_ranking.clear()  # a second call reads the rows back and trains only the new seed
    again = ranking.rank_variants(
        base, {"eps 0.2": {"model.ot.epsilon": 0.2}}, (1, 3), workdir=str(tmp_path), log=None
    )
    assert fake_ranking == [(0.2, (3,))]
    assert [r["hiou"] for r in again["eps 0.2"]] == pytest.approx([1.2, 3.2])


def test_rank_variants_rejects_bad_input_before_training(fake_ranking):
    base = common.get_config()
    with pytest.raises(KeyError, match="epsilom"):
        ranking.rank_variants(base, {"a": {"model.ot.epsilom": 0.1}}, log=None)
    with pytest.raises(ValueError, match="not variants"):
        ranking.rank_variants(base, {"a": {}}, eval_only={"a": "b"}, log=None)
    with pytest.raises(ValueError, match="one or more seeds"):
        ranking.rank_variants(base, {"a": {}}, (), log=None)
    assert fake_ranking == []


PLUGIN = """
import jax
import zegot_jax.ot as zot


@zot.register_transport("row_softmax_test", options={"temperature": 0.1})
def row_softmax(problem, settings):
    m = problem.similarity.shape[0]
    return jax.nn.softmax(problem.similarity / settings.options["temperature"], axis=1) / m
"""


@pytest.mark.slow
def test_workers_give_the_rows_of_one_process_and_load_plugins(tmp_path):
    import zegot_jax.ot as zot  # noqa: PLC0415
    from configs import synthetic  # noqa: PLC0415

    plugin = tmp_path / "row_softmax.py"
    plugin.write_text(PLUGIN)
    base = synthetic.get_config("smoke")
    variants = {"default": {}, "mine": {"model.ot.solver": "row_softmax_test"}}
    workers = ranking.rank_variants(
        base, variants, (0,), statistics=False, log=None, jobs=2, plugins=[str(plugin)]
    )
    assert "row_softmax_test" not in zot.registered_transports()  # registered in the workers
    zot.load_plugins([str(plugin)])
    try:
        alone = ranking.rank_variants(base, variants, (0,), statistics=False, log=None)
    finally:
        zot.unregister_transport("row_softmax_test")
    assert list(workers) == list(variants)
    for name in variants:
        for key in ("miou_seen", "miou_unseen", "hiou", "final_loss"):
            assert workers[name][0][key] == pytest.approx(alone[name][0][key], rel=1e-5), key
    assert workers["mine"][0]["final_loss"] != workers["default"][0]["final_loss"]
    with pytest.raises(ValueError, match="jobs=0"):
        ranking.rank_variants(base, variants, (0,), jobs=0)


def test_workers_refuse_a_transport_of_this_session_only():
    import zegot_jax.ot as zot  # noqa: PLC0415
    from configs import synthetic  # noqa: PLC0415

    def mine(problem, settings):
        return problem.similarity * 0 + 1 / problem.similarity.size

    mine.__module__ = "__main__"  # as a notebook cell defines it
    zot.register_transport("session_only_test", mine)
    try:
        with pytest.raises(ValueError, match=r"plugins=\['that_file.py'\]"):
            ranking.rank_variants(
                synthetic.get_config("smoke"), {"a": {"model.ot.solver": "session_only_test"}}, (0,), jobs=2
            )
    finally:
        zot.unregister_transport("session_only_test")
