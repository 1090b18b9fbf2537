"""The jitted train step: forward, loss (with transductive pseudo-labels), AdamW update.

The step is a pure function of `(state, frozen, batch, text_inputs)`; `state` holds the trainable
parameters, the optimizer state, the step and the RNG key and is donated. Gradients are taken with
respect to `state['params']` only, so CLIP's weights are never differentiated or updated.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from zegot_jax.models.functional import merge, upsample  # noqa: F401 (upsample: re-exported)
from zegot_jax.models.losses import (
    combine_loss_sums,
    importance_points,
    pixel_centres,
    point_loss_sums,
    segmentation_loss,
    segmentation_loss_sums,
    text_consistency_loss,
)


def pseudo_label(logits: jax.Array, labels: jax.Array, unseen: Sequence[int]) -> jax.Array:
    """Transductive self-training: pixels of unseen classes take the model's own argmax over them.

    Args:
      logits: `[B, K, H, W]` scores over all classes.
      labels: `[B, H, W]` full-space ids (255 ignore).
      unseen: ids of the unseen classes.

    Returns:
      labels with every unseen-class pixel replaced by the unseen class the model scores highest
      (no gradient, no threshold).
    """
    ids = jnp.asarray(unseen, jnp.int32)
    best = jnp.argmax(jax.lax.stop_gradient(logits[:, ids]), axis=1)
    is_unseen = jnp.isin(labels, ids)
    return jnp.where(is_unseen, ids[best], labels)


def init_state(params: Any, tx: optax.GradientTransformation, seed: int) -> dict[str, Any]:
    """The train state: step, trainable params, optimizer state, RNG key."""
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.key(seed))}


def make_upsampled_loss(loss_cfg: ml_collections.ConfigDict) -> Callable:
    """`loss(logits [B, K, h, w], labels [B, H, W], key=None) -> (loss, aux)`: focal + dice at
    the labels' resolution.

    With `loss.num_points > 0` the loss reads `num_points` points per image (`key` picks them;
    PointRend's importance sampling, see `losses.importance_points`): the logits bilinearly at
    the points, the labels at the nearest pixel; no `[K, H, W]` map is built. With at least as
    many points as label pixels the points are the pixel centres, and the loss is the full one.
    Else the logits are upsampled; with `loss.per_image` the upsampled `[K, H, W]` logits exist
    for one image at a time: a `lax.map` over the batch of a rematerialised (upsample + loss
    sums) per image, the sums added and divided once (`combine_loss_sums`), so the value equals
    the batched loss. At batch 16, K=156, 512x512 the batched form needs about 9.8 GiB of temp
    (BENCHMARKS.md, memory table).
    """
    options = dict(focal_weight=loss_cfg.focal_weight, dice_weight=loss_cfg.dice_weight,
                   alpha=loss_cfg.focal_alpha, gamma=loss_cfg.focal_gamma,
                   ignore_as_negative=loss_cfg.ignore_as_negative)
    if loss_cfg.get("num_points", 0) > 0:
        return _point_sampled_loss(loss_cfg, options)
    if not loss_cfg.get("per_image", False):
        return lambda logits, labels, key=None: segmentation_loss(
            upsample(logits, labels.shape[1:]), labels, **options)

    @jax.checkpoint
    def sums_of_one(logits, labels):  # [K, h, w], [H, W]
        return segmentation_loss_sums(upsample(logits[None], labels.shape), labels[None],
                                      **options)

    def loss_of(logits, labels, key=None):
        del key  # every pixel counts
        return combine_loss_sums(_sums_image_by_image(sums_of_one, logits, labels), **options)

    return loss_of


def _sums_image_by_image(sums_of_one: Callable, *batch: jax.Array) -> tuple[jax.Array, ...]:
    """`sums_of_one(*image)` added over the batch, one image at a time on each device.

    The batch is split over every device (`sharding.make_mesh`): a map over the whole batch would
    gather it onto each device, so each device maps over its own block (`lax.map`: one image's
    intermediates at a time).
    """
    b = batch[0].shape[0]
    groups = math.gcd(b, jax.device_count())

    def sums_of_group(*block):  # [B / G, ...]: one device's images, in sequence
        return tuple(s.sum() for s in jax.lax.map(lambda image: sums_of_one(*image), block))

    def split(x):
        return x.reshape(groups, b // groups, *x.shape[1:])

    sums = jax.vmap(sums_of_group)(*(split(x) for x in batch))
    return tuple(s.sum() for s in sums)


def _point_sampled_loss(loss_cfg: ml_collections.ConfigDict, options: dict) -> Callable:
    """The `loss.num_points > 0` case of `make_upsampled_loss`."""
    num_points = int(loss_cfg.num_points)

    @jax.checkpoint  # the map would keep every image's [K, P] residuals for the backward
    def sums_at(logits, labels, points):  # [K, h, w], [H, W], [P, 2]
        return point_loss_sums(logits, labels, points, **options)

    def sums_of_one(logits, labels, key):  # [K, h, w], [H, W], a key
        height, width = labels.shape
        if num_points >= height * width:
            points = pixel_centres(height, width)
        else:  # outside the checkpoint: the points carry no gradient, the backward reuses them
            points = importance_points(key, logits, num_points, loss_cfg.point_oversample,
                                       loss_cfg.point_importance)
        return sums_at(logits, labels, points)

    def loss_of(logits, labels, key=None):
        if key is None:
            if num_points < labels.shape[1] * labels.shape[2]:
                raise ValueError("loss.num_points > 0 samples points: pass a random key.")
            key = jax.random.key(0)  # unused: every pixel centre is a point
        keys = jax.random.split(key, logits.shape[0])
        return combine_loss_sums(_sums_image_by_image(sums_of_one, logits, labels, keys),
                                 **options)

    return loss_of


def make_loss_fn(graphdef: Any, config: ml_collections.ConfigDict, *,
                 pseudo_label_ids: Sequence[int] = ()) -> Callable:
    """Returns `loss_fn(params, frozen, batch, text_inputs) -> (loss, aux)`, what the step
    differentiates with respect to `params` (arguments as in `make_train_step`)."""
    loss_cfg = config.loss
    consistency = float(config.model.text_consistency_weight)
    pseudo = tuple(int(i) for i in pseudo_label_ids)
    loss_of = make_upsampled_loss(loss_cfg)

    def loss_fn(params, frozen, batch, text_inputs, key=None):
        model = merge(graphdef, params, frozen)
        text = model.text_features(text_inputs)
        out = model.segment(batch["image"], text)
        labels = batch["label"]
        if pseudo:
            labels = pseudo_label(upsample(out.logits, labels.shape[1:]), labels, pseudo)
        loss, aux = loss_of(out.logits, labels, key)
        if out.ot_marginal_error is not None:  # a convergence diagnostic, logged
            aux["ot_marginal_error"] = out.ot_marginal_error
        if loss_cfg.layer_weight > 0:
            for layer_logits in out.layer_logits:
                loss = loss + loss_cfg.layer_weight * loss_of(layer_logits, labels, key)[0]
        if consistency > 0 and isinstance(text_inputs, dict):  # learned prompts only
            aux["text_consistency"] = text_consistency_loss(text, text_inputs["reference"])
            loss = loss + consistency * aux["text_consistency"]
        return loss, aux

    return loss_fn


def make_train_step(graphdef: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, *,
                    pseudo_label_ids: Sequence[int] = ()) -> Callable:
    """Returns `step(state, frozen, batch, text_inputs) -> (state, metrics)` (not yet jitted).

    Args:
      graphdef: the model graph from `split_model`.
      tx: the optimiser; schedule: its learning rate (for logging).
      config: the experiment config (reads `loss` and `model.text_consistency_weight`).
      pseudo_label_ids: unseen class ids to pseudo-label (transductive training), else empty.
    """
    loss_fn = make_loss_fn(graphdef, config, pseudo_label_ids=pseudo_label_ids)

    def step(state, frozen, batch, text_inputs):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], frozen, batch, text_inputs, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            "focal": aux["focal"],
            "dice": aux["dice"],
            **{k: aux[k] for k in ("text_consistency", "ot_marginal_error") if k in aux},
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": schedule(state["step"]),
        }
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                     "rng": state["rng"]}
        return new_state, metrics

    return step
