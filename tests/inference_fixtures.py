"""A tiny saved training run for the inference, viz and CLI tests (no training: saved params)."""

from typing import Any

import jax
import ml_collections
import numpy as np

from configs import common
from zegot_jax import clip as clip_lib
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.runs import checkpoint as ckpt_lib
from zegot_jax.train import optim
from zegot_jax.train import step as step_lib


def smoke_config() -> ml_collections.ConfigDict:
    """The ':smoke' size of the common config on VOC's classes (tiny random CLIP, slide mode)."""
    config = common.get_config()
    config.data.name = "voc"
    common.apply_smoke(config)
    return config


def save_run(
    workdir: str,
    config: ml_collections.ConfigDict,
    clip: clip_lib.CLIP,
    shift: float = 0.5,
    data_state: Any = None,
) -> functional.SplitModel:
    """Saves a checkpoint as the loop would, with params moved by `shift` away from their init.

    `data_state` (the train iterator's) is needed only by a test that resumes training.
    Returns the split model whose `params` are the saved ones.
    """
    parts = functional.split_model(build_lib.build_model(config, clip))
    params = jax.tree.map(lambda x: x + shift, parts.params)
    tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    ckpt.save(
        config.train.num_steps,
        step_lib.init_state(params, tx, config.seed),
        {} if data_state is None else data_state,
        config,
    )
    ckpt.close()
    return parts._replace(params=params)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 `[H, W, 3]` image with some structure (two halves) and noise."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    image[:, width // 2 :] += np.asarray([150, 90, 20], np.uint8)
    return image
