"""`evaluate_checkpoint`: score a saved run on any dataset's classes (the `evaluate.py` entry)."""

from typing import Any

import jax
import ml_collections

from zegot_jax import distributed, storage
from zegot_jax.configs import checks as config_checks
from zegot_jax.data.setup import DataSetup
from zegot_jax.evaluation import evaluator
from zegot_jax.runs import saved


def evaluate_checkpoint(
    eval_config: ml_collections.ConfigDict, checkpoint: str, *, out: str | None = None
) -> dict[str, Any]:
    """Evaluates `checkpoint` on `eval_config`'s dataset; writes results.{md,json} into `out`."""
    distributed.start()
    checkpoint = storage.normalise(checkpoint)
    out = None if out is None else storage.normalise(out)
    storage.check_writable(out or checkpoint, "--out")
    config = saved.run_config(eval_config, checkpoint)
    config_checks.check(config, sections=config_checks.EVALUATION_SECTIONS)
    DataSetup.from_config(config).check_available(("eval",))
    parts, params = saved.trained_params(config, checkpoint)
    data = DataSetup.from_config(config)
    summary = evaluator.evaluate(
        config,
        parts.graphdef,
        params,
        jax.device_put(parts.frozen),
        data.eval_iterator(),
        data.class_names,
        data.unseen,
        seen_penalty=data.seen_penalty(config),
    )
    if jax.process_index() == 0:  # every process holds the same summary
        print(evaluator.write_results(out or checkpoint, summary, config))
    return summary
