"""Segmentation loss: sigmoid focal over all classes plus dice over the masks present.

Notation: logits `x [B, K, H, W]`, labels `y [B, H, W]`, `P = H * W` pixels per image, one-hot
targets `t[b, k, p] = (y[b, p] == k)` (all zero on ignore pixels), probabilities `q = sigmoid(x)`.

- Pixel weights `w[b, p]`: 1 everywhere if `ignore_as_negative` (ignore pixels are negatives for
  every class, OTSeg's behaviour), else 1 on labelled pixels and 0 on ignore pixels.
- Present masks: `(b, k)` with at least one pixel of class `k` in image `b`;
  `num_masks = max(#present over the whole batch, 1)`.
- Focal, per element: `alpha_t * (1 - p_t)^gamma * BCE(x, t)` with
  `p_t = q t + (1 - q)(1 - t)`, `alpha_t = alpha t + (1 - alpha)(1 - t)`. Per mask `(b, k)`,
  the weighted mean over pixels `sum_p w focal / max(sum_p w, 1)`; summed over all B*K masks
  (present or not), divided by `num_masks`.
- Dice, per present mask: `1 - (2 sum_p w q t + 1) / (sum_p w q + sum_p t + 1)` (smoothing 1 in
  numerator and denominator, as in MaskFormer); summed over present masks, divided by `num_masks`.
- `loss = focal_weight * focal + dice_weight * dice`.

Label ids outside `[0, K)` other than `ignore_index` get an all-zero target like ignore pixels, but
stay in the focal/dice sums (weight 1) whatever `ignore_as_negative` says.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from zegot_jax.models.functional import merge, upsample


def sigmoid_focal(logits: jax.Array, targets: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """Element-wise sigmoid focal loss; same shape as `logits` (float32)."""
    q = jax.nn.sigmoid(logits)
    # BCE with logits, stable: max(x, 0) - x t + log(1 + exp(-|x|)).
    bce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = q * targets + (1 - q) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def segmentation_loss(
    logits: jax.Array, labels: jax.Array, **options
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Focal + dice loss of per-class logits against an integer label map (see module docstring).

    Args:
        logits: `[B, K, H, W]` per-class logits (any float dtype; computed in float32).
        labels: `[B, H, W]` int class ids in `[0, K)` or `ignore_index`.
        **options: `focal_weight`, `dice_weight`, `alpha`, `gamma`, `ignore_index`,
            `ignore_as_negative`, as in `segmentation_loss_sums`.

    Returns:
        `(loss, aux)`: the scalar loss and `{'focal', 'dice', 'num_masks'}` (unweighted terms,
        scalars; num_masks as float32).

    Raises:
        ValueError: on mismatched or wrong-rank shapes.
    """
    return combine_loss_sums(segmentation_loss_sums(logits, labels, **options), **options)


def combine_loss_sums(
    sums: tuple[jax.Array, jax.Array, jax.Array],
    *,
    focal_weight: float = 100.0,
    dice_weight: float = 1.0,
    **_,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(loss, aux)` from `segmentation_loss_sums` (summed over any split of the batch)."""
    focal_sum, dice_sum, present = sums
    num_masks = jnp.maximum(present, 1.0)
    focal_loss, dice_loss = focal_sum / num_masks, dice_sum / num_masks
    loss = focal_weight * focal_loss + dice_weight * dice_loss
    return loss, {"focal": focal_loss, "dice": dice_loss, "num_masks": num_masks}


def segmentation_loss_sums(
    logits: jax.Array,
    labels: jax.Array,
    *,
    focal_weight: float = 100.0,
    dice_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    ignore_index: int = 255,
    ignore_as_negative: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The focal and dice sums over the masks of a batch, and the number of masks.

    Both terms of the loss are sums over (image, class) masks divided by the number of masks in
    the whole batch, so these sums add over any split of the batch (`combine_loss_sums` divides).

    Args:
        logits: `[B, K, H, W]` per-class logits (any float dtype; computed in float32).
        labels: `[B, H, W]` int class ids in `[0, K)` or `ignore_index`.
        focal_weight: weight of the focal term (OTSeg: 100).
        dice_weight: weight of the dice term (OTSeg: 1).
        alpha: focal class balance (a negative value disables it).
        gamma: focal focusing exponent.
        ignore_index: label id of unlabelled pixels.
        ignore_as_negative: if True, ignore pixels count as negatives for every class in the
            focal term and their predictions enter the dice denominator; if False they are left
            out of both.

    Returns:
        `(focal_sum, dice_sum, num_masks)`, float32 scalars (unweighted; num_masks may be 0).

    Raises:
        ValueError: on mismatched or wrong-rank shapes.
    """
    del focal_weight, dice_weight  # weighted in `combine_loss_sums`
    if logits.ndim != 4 or labels.ndim != 3:
        raise ValueError(
            f"segmentation_loss: expected logits [B,K,H,W] and labels [B,H,W], got "
            f"{logits.shape} and {labels.shape}."
        )
    b, k, h, w = logits.shape
    if labels.shape != (b, h, w):
        raise ValueError(
            f"segmentation_loss: labels {labels.shape} do not match logits "
            f"{logits.shape}; resize the logits to the label size first."
        )
    x = logits.reshape(b, k, h * w).astype(jnp.float32)
    y = labels.reshape(b, 1, h * w)
    t = (y == jnp.arange(k)[None, :, None]).astype(jnp.float32)  # [B, K, P]
    if ignore_as_negative:
        weight = jnp.ones((b, 1, h * w), jnp.float32)
    else:
        weight = (y != ignore_index).astype(jnp.float32)

    present = (t.sum(-1) > 0).astype(jnp.float32)  # [B, K]

    focal = sigmoid_focal(x, t, alpha, gamma)
    focal_per_mask = (focal * weight).sum(-1) / jnp.maximum(weight.sum(-1), 1.0)  # [B, K]

    q = jax.nn.sigmoid(x)
    numerator = 2 * (q * t).sum(-1) + 1
    denominator = (q * weight).sum(-1) + t.sum(-1) + 1
    dice = ((1 - numerator / denominator) * present).sum()
    return focal_per_mask.sum(), dice, present.sum()


def text_consistency_loss(text: jax.Array, reference: jax.Array) -> jax.Array:
    """KgCoOp's knowledge-guided term: mean over classes and prompts of `1 - cos(t, t_ref)`.

    Yao, Zhang, Xu, "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization"
    (CVPR 2023): keeping the learned class text features near the hand-crafted ones preserves
    CLIP's zero-shot knowledge for new classes (their weight: 8).

    Args:
        text: learned text features `[K, N, D]` (L2-normalised).
        reference: frozen template features `[K, T, D]`; their mean over templates, normalised,
            is the class's reference.

    Returns:
        The scalar mean distance (0 when every prompt equals its class's reference).
    """
    ref = reference.mean(axis=1)
    ref = ref / jnp.maximum(jnp.linalg.norm(ref, axis=-1, keepdims=True), 1e-12)
    cos = jnp.einsum("knd,kd->kn", text.astype(jnp.float32), ref.astype(jnp.float32))
    return jnp.mean(1.0 - cos)


def point_sample(logits: jax.Array, points: jax.Array) -> jax.Array:
    """Bilinear values of maps `[K, h, w]` at points `[P, 2]` `(y, x)` in `[0, 1]`: `[K, P]`.

    The same interpolation as `functional.upsample` (half-pixel centres, edges clamped): at the
    centre `((i + 0.5) / H, (j + 0.5) / W)` of pixel `(i, j)` of an `H x W` grid it gives the
    upsampled map's value there, without building the `[K, H, W]` maps. Each point reads K
    contiguous values of the maps laid out `[h, w, K]` (and the backward adds K contiguous
    values): importance sampling at 156 classes took 48 ms an image instead of 79 on the CPU.
    """
    _, h, w = logits.shape

    def corners(coord, size):
        u = jnp.clip(coord * size - 0.5, 0.0, size - 1.0)
        low = jnp.floor(u).astype(jnp.int32)
        return low, jnp.minimum(low + 1, size - 1), (u - low)[:, None]

    y0, y1, wy = corners(points[:, 0], h)
    x0, x1, wx = corners(points[:, 1], w)
    maps = logits.transpose(1, 2, 0)  # [h, w, K]
    top = maps[y0, x0] * (1 - wx) + maps[y0, x1] * wx
    bottom = maps[y1, x0] * (1 - wx) + maps[y1, x1] * wx
    return (top * (1 - wy) + bottom * wy).T


def pixel_centres(height: int, width: int) -> jax.Array:
    """Every pixel centre of an `H x W` grid as points `[H * W, 2]` in `[0, 1]`, row-major."""
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
    return jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def importance_points(
    key: jax.Array, logits: jax.Array, num_points: int, oversample: float, importance: float
) -> jax.Array:
    """PointRend's training points for one image: `[num_points, 2]` in `[0, 1]`.

    Kirillov et al., "PointRend" (CVPR 2020), as Mask2Former trains its masks (Cheng et al.,
    CVPR 2022: 12,544 points, oversampling 3, importance 0.75): `oversample * num_points` uniform
    candidates, the `importance * num_points` most uncertain of them, the rest uniform. Here the
    points are shared by the K class maps of the image (so focal and dice read one label per
    point); a point's uncertainty is `-min_k |x_k|`, the class logit closest to its boundary.
    """
    num_important = int(importance * num_points)
    candidates_key, uniform_key = jax.random.split(key)
    candidates = jax.random.uniform(candidates_key, (max(int(oversample * num_points), num_important), 2))
    values = jax.lax.stop_gradient(point_sample(logits, candidates))
    uncertainty = -jnp.min(jnp.abs(values), axis=0)
    _, chosen = jax.lax.top_k(uncertainty, num_important)
    uniform = jax.random.uniform(uniform_key, (num_points - num_important, 2))
    return jnp.concatenate([candidates[chosen], uniform])


def point_loss_sums(
    logits: jax.Array, labels: jax.Array, points: jax.Array, **options
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`segmentation_loss_sums` of one image read at `points [P, 2]`.

    Logits `[K, h, w]` are read bilinearly, labels `[H, W]` at the nearest pixel, never building the
    `[K, H, W]` maps.
    """
    height, width = labels.shape
    rows = jnp.clip(jnp.floor(points[:, 0] * height).astype(jnp.int32), 0, height - 1)
    cols = jnp.clip(jnp.floor(points[:, 1] * width).astype(jnp.int32), 0, width - 1)
    values = point_sample(logits, points)  # [K, P]
    return segmentation_loss_sums(values[None, :, :, None], labels[rows, cols][None, :, None], **options)


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


def make_upsampled_loss(loss_cfg: ml_collections.ConfigDict) -> Callable:
    """Returns `loss(logits [B, K, h, w], labels [B, H, W], key=None) -> (loss, aux)`.

    The loss is focal + dice at the labels' resolution.

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
    options = dict(
        focal_weight=loss_cfg.focal_weight,
        dice_weight=loss_cfg.dice_weight,
        alpha=loss_cfg.focal_alpha,
        gamma=loss_cfg.focal_gamma,
        ignore_as_negative=loss_cfg.ignore_as_negative,
    )
    if loss_cfg.get("num_points", 0) > 0:
        return _point_sampled_loss(loss_cfg, options)
    if not loss_cfg.get("per_image", False):
        return lambda logits, labels, key=None: segmentation_loss(
            upsample(logits, labels.shape[1:]), labels, **options
        )

    @jax.checkpoint
    def sums_of_one(logits, labels):  # [K, h, w], [H, W]
        return segmentation_loss_sums(upsample(logits[None], labels.shape), labels[None], **options)

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
            points = importance_points(
                key, logits, num_points, loss_cfg.point_oversample, loss_cfg.point_importance
            )
        return sums_at(logits, labels, points)

    def loss_of(logits, labels, key=None):
        if key is None:
            if num_points < labels.shape[1] * labels.shape[2]:
                raise ValueError("loss.num_points > 0 samples points: pass a random key.")
            key = jax.random.key(0)  # unused: every pixel centre is a point
        keys = jax.random.split(key, logits.shape[0])
        return combine_loss_sums(_sums_image_by_image(sums_of_one, logits, labels, keys), **options)

    return loss_of


def make_loss_fn(
    graphdef: Any, config: ml_collections.ConfigDict, *, pseudo_label_ids: Sequence[int] = ()
) -> Callable:
    """Returns `loss_fn(params, frozen, batch, text_inputs) -> (loss, aux)`.

    What the step differentiates with respect to `params` (arguments as in `make_train_step`).
    """
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
