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
from zegot_jax.synthetic import world
from zegot_jax.synthetic.pretrain import image_embedding


def _l2(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def text_embeddings(clip: CLIP, texts: Sequence[str]) -> jax.Array:
    """L2-normalised text embeddings `[len(texts), D]`."""
    return _l2(clip.encode_text(jnp.asarray(tokenize(list(texts), clip.spec.context_length))))


def _batches(source, num: int, batch_size: int):
    for start in range(0, num, batch_size):
        items = [source[i] for i in range(start, min(start + batch_size, num))]
        yield (np.stack([it['image'] for it in items]), np.stack([it['label'] for it in items]),
               [it['caption'] for it in items])


def _confusion(pred: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(label.ravel().astype(np.int64) * k + pred.ravel(),
                       minlength=k * k).reshape(k, k)


def _iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU `[K]` from a `[K, K]` (label, prediction) confusion; nan where undefined."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(union > 0, tp / union, np.nan)


def chance_iou(label_counts: np.ndarray) -> np.ndarray:
    """Expected per-class IoU `[K]` of predictions drawn uniformly at random over K classes."""
    n, k = label_counts.astype(np.float64), len(label_counts)
    return (n / k) / (n + n.sum() / k - n / k)


def patch_ceiling_iou(labels: np.ndarray, patch: int, k: int) -> np.ndarray:
    """Per-class IoU `[K]` of the best prediction constant over each patch (majority label)."""
    b, h, w = labels.shape
    blocks = labels.reshape(b, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4)
    counts = (blocks.reshape(*blocks.shape[:3], -1)[..., None] == np.arange(k)).sum(-2)
    major = counts.argmax(-1).repeat(patch, 1).repeat(patch, 2)
    return _iou(_confusion(major, labels, k))


def zero_shot_dense_miou(clip: CLIP, source, *, num_images: int = 256, batch_size: int = 64,
                         template: str = 'a photo of a {}.', dense: str = 'standard',
                         class_names: Sequence[str] = world.CLASS_NAMES,
                         unseen: Sequence[int] = world.UNSEEN) -> dict:
    """Dense zero-shot segmentation with one hand-crafted prompt per class, no training.

    Each patch embedding (`clip.visual(..., dense=dense)`) is compared by cosine with the prompt
    embeddings; the `[K, h, w]` scores are resized bilinearly to the image and the argmax taken.

    Args:
        clip: the model.
        source: random-access items {'image': uint8 [H, W, 3], 'label': uint8 [H, W]}.
        num_images: how many items (the first ones) to evaluate.
        batch_size: images per forward pass.
        template: prompt with one '{}' for the class name.
        dense: 'standard' or 'value' (see `VisionTransformer.__call__`).
        class_names: names in label-id order.
        unseen: ids of the unseen classes.

    Returns:
        {'miou', 'miou_seen', 'miou_unseen', 'pixel_acc', 'chance_miou', 'chance_miou_unseen',
         'ceiling_miou', 'per_class_iou' {name: iou}}; the ceiling is the best prediction constant
        over each patch.
    """
    k = len(class_names)
    num_images = min(num_images, len(source))
    graphdef, state = nnx.split(clip)
    text = text_embeddings(clip, [template.format(n) for n in class_names])

    @jax.jit
    def predict(state, images):
        model = nnx.merge(graphdef, state)
        _, inter = model.visual(normalize(images), dense=dense)
        scores = _l2(inter['dense']) @ text.T  # [B, h, w, K]
        scores = jax.image.resize(scores, (*images.shape[:3], k), 'bilinear', antialias=False)
        return jnp.argmax(scores, -1)

    conf = np.zeros((k, k), np.int64)
    labels = []
    for images, label, _ in _batches(source, num_images, batch_size):
        conf += _confusion(np.asarray(predict(state, images)), label, k)
        labels.append(label)
    labels = np.concatenate(labels)
    iou, chance = _iou(conf), chance_iou(conf.sum(1))
    seen = [i for i in range(k) if i not in unseen]
    return {
        'miou': float(np.nanmean(iou)), 'miou_seen': float(np.nanmean(iou[seen])),
        'miou_unseen': float(np.nanmean(iou[list(unseen)])),
        'pixel_acc': float(np.trace(conf) / conf.sum()),
        'chance_miou': float(chance.mean()),
        'chance_miou_unseen': float(chance[list(unseen)].mean()),
        'ceiling_miou': float(np.nanmean(patch_ceiling_iou(labels, clip.spec.patch_size, k))),
        'per_class_iou': dict(zip(class_names, iou.round(4).tolist(), strict=True)),
    }


def retrieval_top1(clip: CLIP, source, *, num_images: int = 256, embed=None) -> dict:
    """Image -> caption retrieval among the captions of `num_images` held-out items.

    Args:
        clip: the model.
        source: random-access items with 'image', 'label' and 'caption'.
        num_images: size of the gallery (and number of queries).
        embed: image embedding `(clip, normalised images) -> [B, D]`; default the mean-pooled
            projected patch tokens used in pretraining.

    Returns:
        {'top1': exact caption, 'content_top1': retrieved caption names the same classes,
         'chance': 1 / num_images, 'content_chance': the same for guessing at random}.
    """
    embed = embed or image_embedding
    images, labels, captions = next(_batches(source, min(num_images, len(source)), num_images))
    img = _l2(embed(clip, normalize(images)))
    best = np.asarray(jnp.argmax(img @ text_embeddings(clip, captions).T, -1))
    k = len(world.CLASS_NAMES)
    present = np.stack([np.bincount(lab.ravel(), minlength=k) > 0 for lab in labels])
    same = (present[:, None] == present[None]).all(-1)
    n = len(captions)
    return {'top1': float((best == np.arange(n)).mean()),
            'content_top1': float(same[np.arange(n), best].mean()),
            'chance': 1 / n, 'content_chance': float(same.mean())}
