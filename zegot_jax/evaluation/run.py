"""`evaluate_checkpoint`: score a saved run on any dataset's classes (the `evaluate.py` entry)."""

from typing import Any

import jax
import ml_collections

from zegot_jax import config_checks, errors, ot, sharding
from zegot_jax.evaluation import evaluator
from zegot_jax.train import checkpoint as ckpt_lib
from zegot_jax.train import inputs, optim
from zegot_jax.train import state as state_lib
from zegot_jax.train import step as step_lib


def run_config(eval_config: ml_collections.ConfigDict, checkpoint: str) -> ml_collections.ConfigDict:
    """The trained run's backbone and model settings, with the evaluation config's data and eval."""
    saved = ckpt_lib.read_config(checkpoint)
    config = ml_collections.ConfigDict(eval_config.to_dict())
    kept = {k: saved[k] for k in ("clip", "model", "seed") if k in saved}
    if "pretrain" in saved.get("synthetic", {}):  # which synthetic CLIP the run was trained with
        if "synthetic" not in config:  # another dataset's config scoring a synthetic-world run
            config.synthetic = ml_collections.ConfigDict()
        if "pretrain" not in config.synthetic:
            config.synthetic.pretrain = ml_collections.ConfigDict(saved["synthetic"]["pretrain"])
        kept["synthetic"] = {"pretrain": saved["synthetic"]["pretrain"]}
    ckpt_lib.update_from_saved(config, kept)
    ot.require_registered(config.model.ot.solver, f"The run {checkpoint!r}")
    return config


def load_trained(config: ml_collections.ConfigDict, checkpoint: str, *, offline: bool = False
                 ) -> tuple[state_lib.SplitModel, Any]:
    """The model of `config` with the trainable parameters of `checkpoint`'s latest step (with
    `offline`, a hub id in `clip.weights` is read from the local cache only)."""
    clip = state_lib.load_clip(config, offline=offline)
    parts = state_lib.split_model(state_lib.build_model(config, clip))
    tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
    template = step_lib.init_state(parts.params, tx, config.seed)
    ckpt = ckpt_lib.Checkpointer(checkpoint, async_save=False, create=False)
    try:
        state, _, _ = ckpt.restore(ckpt_lib.abstract(template))
    finally:
        ckpt.close()
    return parts, state["params"]


def evaluate_checkpoint(eval_config: ml_collections.ConfigDict, checkpoint: str, *,
                        out: str | None = None) -> dict[str, Any]:
    """Evaluates `checkpoint` on `eval_config`'s dataset; writes results.{md,json} into `out`."""
    sharding.maybe_initialize_distributed()
    errors.check_writable_dir(out or checkpoint, "--out")
    config = run_config(eval_config, checkpoint)
    config_checks.check(config, sections=config_checks.EVALUATION_SECTIONS)
    inputs.DataSetup.from_config(config).check_available(("eval",))
    parts, params = load_trained(config, checkpoint)
    data = inputs.DataSetup.from_config(config)
    summary = evaluator.evaluate(config, parts.graphdef, params, jax.device_put(parts.frozen),
                                 data.eval_iterator(), data.class_names, data.unseen,
                                 seen_penalty=data.seen_penalty(config))
    if jax.process_index() == 0:  # every process holds the same summary
        print(evaluator.write_results(out or checkpoint, summary, config))
    return summary
