"""Training-free measurements of a CLIP on the synthetic world: retrieval and dense zero-shot.

Both use the world's own class names; they are the baselines every learned result is read
against, so each returns its chance level next to the score.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zegot_jax.clip.model import CLIP
from zegot_jax.clip.preprocess import normalize
from zegot_jax.clip.tokenizer import tokenize
from zegot_jax.evaluation import metrics
from zegot_jax.synthetic import world
from zegot_jax.synthetic.pretrain import image_embedding


def _l2(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _jitted(clip: CLIP, fn):
    """`fn(clip, *args)` as one compiled function of the arrays `args` (model split once)."""
    graphdef, state = nnx.split(clip)
    compiled = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
    return lambda *args: compiled(state, *args)


def text_embeddings(clip: CLIP, texts: Sequence[str]) -> jax.Array:
    """L2-normalised text embeddings `[len(texts), D]`."""
    tokens = tokenize(list(texts), clip.spec.context_length)
    return _jitted(clip, lambda m, t: _l2(m.encode_text(t)))(tokens)


def _batches(source, num: int, batch_size: int):
    for start in range(0, num, batch_size):
        items = [source[i] for i in range(start, min(start + batch_size, num))]
        yield (
            np.stack([it["image"] for it in items]),
            np.stack([it["label"] for it in items]),
            [it["caption"] for it in items],
        )


def chance_iou(label_counts: np.ndarray) -> np.ndarray:
    """Expected per-class IoU `[K]` of predictions drawn uniformly at random over K classes."""
    n, k = label_counts.astype(np.float64), len(label_counts)
    return (n / k) / (n + n.sum() / k - n / k)


def patch_ceiling_confusion(labels: np.ndarray, patch: int, k: int) -> np.ndarray:
    """Confusion `[K, K]` of the best prediction constant over each patch (its majority label).

    Args:
        labels: `[B, H, W]` class ids, H and W multiples of `patch`.
        patch: side of the constant blocks.
        k: number of classes.
    """
    b, h, w = labels.shape
    blocks = labels.reshape(b, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4)
    counts = (blocks.reshape(*blocks.shape[:3], -1)[..., None] == np.arange(k)).sum(-2)
    major = counts.argmax(-1).repeat(patch, 1).repeat(patch, 2)
    return np.asarray(metrics.confusion_matrix(major, labels, k), np.int64)


def zero_shot_dense_miou(
    clip: CLIP,
    source,
    *,
    num_images: int = 256,
    batch_size: int = 64,
    template: str = "a photo of a {}.",
    dense: str = "standard",
    layer: int | None = None,
    class_names: Sequence[str] = world.CLASS_NAMES,
    unseen: Sequence[int] = world.UNSEEN,
) -> dict:
    """Dense zero-shot segmentation with one hand-crafted prompt per class, no training.

    Each patch embedding (`clip.visual(..., dense=dense)`) is compared by cosine with the prompt
    embeddings; the `[K, h, w]` scores are resized bilinearly to the image and the argmax taken.

    Args:
        clip: the model.
        source: random-access items {'image': uint8 [H, W, 3], 'label': uint8 [H, W]}.
        num_images: how many items (the first ones) to evaluate.
        batch_size: images per forward pass.
        template: prompt with one '{}' for the class name.
        dense: 'standard' or 'value' (see `VisionTransformer.__call__`), for the last block.
        layer: if given, the patch tokens after this 0-indexed block instead, through the frozen
            ln_post and proj (as ZegOT reads intermediate layers); `dense` is then ignored.
        class_names: names in label-id order.
        unseen: ids of the unseen classes.

    Returns:
        `zegot_jax.evaluation.metrics.summarize` of the predictions (miou, miou_seen, miou_unseen,
        hiou, pixel_acc, per_class_iou, ...) plus 'chance_miou' and 'chance_miou_unseen' (uniform
        random predictions) and 'ceiling_miou' (the best prediction constant over each patch).
    """
    k = len(class_names)
    num_images = min(num_images, len(source))
    text = text_embeddings(clip, [template.format(n) for n in class_names])

    def predict(model, images, text, labels):
        if layer is None:
            _, inter = model.visual(normalize(images), dense=dense)
            feats = inter["dense"]
        else:
            _, inter = model.visual(normalize(images), layers=(layer,))
            tokens = model.visual.project(inter[f"layer_{layer}"][:, 1:])
            side = images.shape[1] // model.spec.patch_size
            feats = tokens.reshape(images.shape[0], side, -1, tokens.shape[-1])
        scores = _l2(feats) @ text.T  # [B, h, w, K]
        scores = jax.image.resize(scores, (*images.shape[:3], k), "bilinear", antialias=False)
        return metrics.confusion_matrix(jnp.argmax(scores, -1), labels, k)

    predict = _jitted(clip, predict)
    conf = np.zeros((k, k), np.int64)
    labels = []
    for images, label, _ in _batches(source, num_images, batch_size):
        conf += np.asarray(predict(images, text, label), np.int64)
        labels.append(label)
    ceiling = metrics.summarize(
        patch_ceiling_confusion(np.concatenate(labels), clip.spec.patch_size, k), class_names, unseen
    )
    chance = chance_iou(conf.sum(1))
    summary = metrics.summarize(conf, class_names, unseen)
    summary.update(
        chance_miou=float(chance.mean()),
        chance_miou_unseen=float(chance[list(unseen)].mean()),
        ceiling_miou=ceiling["miou"],
    )
    return summary


def retrieval_top1(clip: CLIP, source, *, num_images: int = 256, embed=None) -> dict:
    """Image -> caption retrieval among the captions of `num_images` held-out items.

    Args:
        clip: the model.
        source: random-access items with 'image', 'label' and 'caption'.
        num_images: size of the gallery (and number of queries).
        embed: image embedding `(clip, normalised images) -> [B, D]`; default the class token
            (`pretrain.image_embedding` with 'class' pooling).

    Returns:
        {'top1': exact caption, 'content_top1': retrieved caption names the same classes,
         'chance': 1 / num_images, 'content_chance': the same for guessing at random}.
    """
    embed = embed or image_embedding
    images, labels, captions = next(_batches(source, min(num_images, len(source)), num_images))
    img = _jitted(clip, lambda m, x: _l2(embed(m, normalize(x))))(images)
    best = np.asarray(jnp.argmax(img @ text_embeddings(clip, captions).T, -1))
    k = len(world.CLASS_NAMES)
    present = np.stack([np.bincount(lab.ravel(), minlength=k) > 0 for lab in labels])
    same = (present[:, None] == present[None]).all(-1)
    n = len(captions)
    return {
        "top1": float((best == np.arange(n)).mean()),
        "content_top1": float(same[np.arange(n), best].mean()),
        "chance": 1 / n,
        "content_chance": float(same.mean()),
    }
