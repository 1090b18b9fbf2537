"""Reading a run back: its config, its trained parameters, and the checks that it is one.

    config = saved.run_config(eval_config, "runs/voc")          # its model on another dataset
    parts, params = saved.trained_params(config, "runs/voc")    # no optimizer is built

The trainable parameters are a checkpoint item of their own, restored against the built model's
`Trainable` state; runs saved in the older one-item layout are read as well (`checkpoint`).
"""

import os
from pathlib import Path
from typing import Any

import ml_collections

from zegot_jax import ot, storage
from zegot_jax.configs.overrides import update_from_saved
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.runs import checkpoint as ckpt_lib

# What a run decides about the model, whatever config scores it.
MODEL_SECTIONS = ("clip", "model", "seed")


def check_run(workdir: str | os.PathLike) -> None:
    """Raises FileNotFoundError unless `workdir` looks like a training run with checkpoints."""
    workdir = storage.normalise(workdir)
    storage.require_gcs(workdir)
    if storage.is_remote(workdir):
        with storage.gcs_errors(workdir):
            if not storage.listdir(ckpt_lib.directory(workdir)):
                raise FileNotFoundError(
                    f"{workdir!r} holds no {ckpt_lib.CHECKPOINTS}/ folder: is "
                    "it the --workdir of a train.py run?"
                )
        return
    if not Path(workdir).is_dir():
        raise FileNotFoundError(
            f"Run directory {workdir!r} does not exist: pass the --workdir of a train.py run."
        )
    if not Path(ckpt_lib.directory(workdir)).is_dir():
        raise FileNotFoundError(
            f"{workdir!r} holds no {ckpt_lib.CHECKPOINTS}/ folder: is it the --workdir of a train.py run?"
        )


def check_init_from(path: str) -> None:
    """Raises FileNotFoundError unless `path` (train.init_from) holds a checkpoint."""
    if path and not ckpt_lib.has_checkpoint(path):
        raise FileNotFoundError(
            f"train.init_from={path!r} holds no checkpoint: give the --workdir of a finished train.py run."
        )


def run_config(eval_config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The run's backbone and model settings, with `eval_config`'s data and evaluation."""
    saved = ckpt_lib.read_config(workdir)
    config = ml_collections.ConfigDict(eval_config.to_dict())
    kept = {k: saved[k] for k in MODEL_SECTIONS if k in saved}
    if "pretrain" in saved.get("synthetic", {}):  # which synthetic CLIP the run was trained with
        if "synthetic" not in config:  # another dataset's config scoring a synthetic-world run
            config.synthetic = ml_collections.ConfigDict()
        if "pretrain" not in config.synthetic:
            config.synthetic.pretrain = ml_collections.ConfigDict(saved["synthetic"]["pretrain"])
        kept["synthetic"] = {"pretrain": saved["synthetic"]["pretrain"]}
    update_from_saved(config, kept)
    ot.require_registered(config.model.ot.solver, f"The run {workdir!r}")
    return config


def read_params(workdir: str, abstract_params: Any) -> Any:
    """The trainable parameters of `workdir`'s latest step.

    Restored into `abstract_params`' structure (shapes, dtypes and shardings).
    """
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False, create=False)
    try:
        return ckpt.restore_params(abstract_params)
    finally:
        ckpt.close()


def trained_params(
    config: ml_collections.ConfigDict, workdir: str, *, offline: bool = False
) -> tuple[functional.SplitModel, Any]:
    """The model of `config` and the trainable parameters of `workdir`'s latest step.

    With `offline`, a hub id in `clip.weights` is read from the local cache only.
    """
    clip = build_lib.load_clip(config, offline=offline)
    parts = functional.split_model(build_lib.build_model(config, clip))
    return parts, read_params(workdir, ckpt_lib.abstract(parts.params))
