"""A small CLIP pretrained contrastively on the synthetic world's image-caption pairs.

The model is `zegot_jax.clip.CLIP` (the same code as the real backbone) with a small `CLIPSpec`.
The image embedding of the contrastive loss is chosen by `pooling`: 'class' (the class token after
ln_post and proj, as real CLIP is trained, so the patch tokens are only indirectly aligned with text,
MaskCLIP's starting point) or 'mean' (the mean of the projected patch tokens, which aligns every
patch with text directly and leaves training little class-agnostic alignment to learn). Training
runs a fixed number of steps on a fixed data stream, so a configuration always yields the same
weights; `pretrained_clip` caches them by a hash of the config.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from zegot_jax.clip.model import CLIP
from zegot_jax.clip.preprocess import normalize
from zegot_jax.clip.tokenizer import tokenize
from zegot_jax.clip.variants import CLIPSpec
from zegot_jax.clip.weights import load, save_safetensors
from zegot_jax.synthetic import world

TRAINER_VERSION = 2  # bump when the trainer changes what a config produces (invalidates caches)


def default_pretrain_config(size: str = "default") -> ml_collections.ConfigDict:
    """The pretraining section of the synthetic experiment.

    Args:
        size: 'default' (64 px, 4-block towers, about 5 minutes on 2 CPU cores) or 'smoke'
            (32 px, one block, a few steps: for tests).
    """
    if size not in ("default", "smoke"):
        raise ValueError(f"size must be 'default' or 'smoke', got {size!r}")
    c = ml_collections.ConfigDict()
    c.world_seed = 0  # which synthetic world ('pretrain' split) the pairs come from
    c.seed = 0  # parameter initialisation
    c.image_size = 64
    c.steps = 340
    c.batch_size = 128
    c.learning_rate = 2e-3
    c.warmup_steps = 20
    c.weight_decay = 0.1  # on parameters with >= 2 dims (not biases, norm scales, temperature)
    c.grad_clip = 1.0
    c.init_temperature = 0.07
    c.max_logit_scale = 100.0
    # Items of a batch with the same set of classes count as positives of each other (their
    # captions describe the same content); False gives plain one-hot InfoNCE targets.
    c.multi_positive = True
    c.pooling = "class"  # image embedding: 'class' token (as real CLIP) or 'mean' of patch tokens
    c.model = ml_collections.ConfigDict(
        dict(
            embed_dim=128,
            patch_size=8,
            vision_width=128,
            vision_layers=4,
            vision_heads=4,
            text_width=128,
            text_layers=3,
            text_heads=4,
            context_length=32,
            activation="quick_gelu",
        )
    )
    if size == "smoke":
        c.image_size = 32
        c.steps, c.batch_size, c.warmup_steps = 4, 16, 1
        c.model.update(
            embed_dim=32,
            vision_width=32,
            vision_layers=1,
            vision_heads=2,
            text_width=32,
            text_layers=1,
            text_heads=2,
        )
    return c


def clip_spec(config: ml_collections.ConfigDict) -> CLIPSpec:
    """The `CLIPSpec` of a pretraining config (trained at `config.image_size`)."""
    return CLIPSpec(image_size=config.image_size, **config.model.to_dict())


def config_hash(config: ml_collections.ConfigDict) -> str:
    """12 hex digits identifying everything that determines the pretrained weights.

    Only the fields of `default_pretrain_config()` count, so a section that also carries other
    settings (e.g. how many images segmentation trains on) keeps its cache.
    """
    fields = {}
    for key in default_pretrain_config().keys():
        if key not in config:
            raise ValueError(
                f"pretraining config lacks field {key!r}; start from "
                "zegot_jax.synthetic.pretrain.default_pretrain_config()."
            )
        value = config[key]
        fields[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    payload = dict(config=fields, trainer=TRAINER_VERSION, world=world.WORLD_VERSION)
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cache_path(config: ml_collections.ConfigDict, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where `pretrained_clip` keeps the weights of `config`.

    The directory is `cache_dir`, else `$ZEGOT_CACHE`, else `~/.cache/zegot_jax`.
    """
    root = cache_dir or os.environ.get("ZEGOT_CACHE") or pathlib.Path.home() / ".cache/zegot_jax"
    return pathlib.Path(root).expanduser() / f"synthetic_clip-{config_hash(config)}.safetensors"


POOLINGS = ("class", "mean")


def image_embedding(clip: CLIP, images: jax.Array, pooling: str = "class") -> jax.Array:
    """The pretraining image embedding `[B, D]` of normalised images `[B, H, W, 3]`.

    Args:
        clip: the model.
        images: CLIP-normalised images.
        pooling: 'class' (the class token, ln_post + proj) or 'mean' (mean of the projected
            patch tokens).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: use one of {POOLINGS}.")
    if pooling == "class":
        pooled, _ = clip.visual(images)
        return pooled
    _, inter = clip.visual(images, dense="standard")
    return inter["dense"].mean(axis=(1, 2))


def contrastive_loss(
    image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, groups: jax.Array | None = None
) -> jax.Array:
    """Symmetric InfoNCE between matching rows.

    Args:
        image_emb: `[B, D]` (normalised here).
        text_emb: `[B, D]` (normalised here).
        logit_scale: log of the inverse temperature (scalar).
        groups: optional `[B]` int; rows with equal group ids are positives of each other
            (targets spread evenly over them). None: one positive per row (the diagonal).

    Returns:
        Scalar mean of the image->text and text->image cross-entropies.
    """
    img = image_emb / jnp.linalg.norm(image_emb, axis=-1, keepdims=True)
    txt = text_emb / jnp.linalg.norm(text_emb, axis=-1, keepdims=True)
    logits = jnp.exp(logit_scale) * img @ txt.T
    if groups is None:
        targets = jnp.eye(logits.shape[0], dtype=logits.dtype)
    else:
        same = (groups[:, None] == groups[None, :]).astype(logits.dtype)
        targets = same / same.sum(-1, keepdims=True)
    i2t = optax.softmax_cross_entropy(logits, targets)
    t2i = optax.softmax_cross_entropy(logits.T, targets)
    return (i2t.mean() + t2i.mean()) / 2


def make_batch(config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
    """Pairs `step * B ... (step + 1) * B - 1` of the 'pretrain' split.

    Returns:
        {'images': uint8 `[B, S, S, 3]`, 'tokens': int32 `[B, L]`, 'groups': int32 `[B]` (a bit
        mask of the classes present, equal for images with the same content)}.
    """
    b = config.batch_size
    items = [world.render(config.world_seed, "pretrain", step * b + i, config.image_size) for i in range(b)]
    bits = 1 << np.arange(len(world.CLASS_NAMES))
    groups = [int(bits[np.unique(it["label"])].sum()) for it in items]
    return {
        "images": np.stack([it["image"] for it in items]),
        "tokens": tokenize([it["caption"] for it in items], config.model.context_length),
        "groups": np.asarray(groups, np.int32),
    }


def _optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, max(config.steps, config.warmup_steps + 1)
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask),
    )


def init_clip(config: ml_collections.ConfigDict) -> CLIP:
    """A randomly initialised CLIP of the config's spec, with the config's temperature."""
    clip = CLIP(clip_spec(config), rngs=nnx.Rngs(config.seed))
    clip.logit_scale.set_value(jnp.asarray(np.log(1 / config.init_temperature), jnp.float32))
    return clip


def pretrain(config: ml_collections.ConfigDict, *, progress: bool = True) -> tuple[CLIP, dict]:
    """Trains a CLIP from scratch for `config.steps` steps (no caching; see `pretrained_clip`).

    Returns:
        The trained model and a history {'loss', 'logit_scale', 'seconds'}, one float per step
        (`seconds`: wall time from the start to the end of the step, compilation included).
    """
    clip = init_clip(config)
    graphdef, params = nnx.split(clip)
    tx, step = _train_step(config, graphdef)
    opt_state = tx.init(params)
    history = {"loss": [], "logit_scale": [], "seconds": []}
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="pretraining synthetic CLIP", disable=not progress)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(make_batch, config, 0)
        for i in bar:
            batch = pending.result()
            if i + 1 < config.steps:
                pending = pool.submit(make_batch, config, i + 1)
            params, opt_state, loss, scale = step(params, opt_state, batch)
            history["loss"].append(float(loss))
            history["logit_scale"].append(float(scale))
            history["seconds"].append(time.perf_counter() - start)
            if not np.isfinite(history["loss"][-1]):
                raise FloatingPointError(
                    f"pretraining loss is {loss} at step {i}; lower "
                    "config.learning_rate or raise config.grad_clip."
                )
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
    nnx.update(clip, params)
    return clip, history


_STEPS: dict[str, tuple] = {}  # config hash -> (optimizer, compiled step), reused across runs


def _train_step(config: ml_collections.ConfigDict, graphdef) -> tuple:
    """The optimizer and the jitted pure training step of `config`.

    The step maps `(params, opt_state, batch)` to `(params, opt_state, loss, logit_scale)`. It is
    built once per configuration, so a rerun of the same configuration skips compiling.
    """
    key = config_hash(config)
    if key in _STEPS:
        return _STEPS[key]
    tx = _optimizer(config)
    max_scale = float(np.log(config.max_logit_scale))
    multi_positive = bool(config.multi_positive)
    pooling = config.pooling

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params)
        img = image_embedding(model, normalize(batch["images"]), pooling)
        txt = model.encode_text(batch["tokens"])
        groups = batch["groups"] if multi_positive else None
        return contrastive_loss(img, txt, model.logit_scale[...], groups)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params["logit_scale"] = jax.tree.map(lambda s: jnp.clip(s, 0.0, max_scale), params["logit_scale"])
        return params, opt_state, loss, params["logit_scale"][...]

    _STEPS[key] = (tx, step)
    return tx, step


def pretrained_clip(
    config: ml_collections.ConfigDict | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
) -> CLIP:
    """The synthetic CLIP of `config`: loaded from the cache, else trained, cached and loaded.

    Args:
        config: a pretraining section (`default_pretrain_config()` when None); other fields in
            it are ignored.
        cache_dir: overrides `$ZEGOT_CACHE` / `~/.cache/zegot_jax`.
        progress: show a tqdm bar while training.
        dtype: compute dtype of the returned model.
        param_dtype: storage dtype of its parameters.

    Returns:
        The model, always read back from `cache_path(config, cache_dir)` (so a fresh run and a
        cached one return the same thing).
    """
    config = default_pretrain_config() if config is None else config
    path = cache_path(config, cache_dir)
    if not path.is_file():
        _train_and_store(config, path, progress)
    return load(path, dtype=dtype, param_dtype=param_dtype)


def _train_and_store(config: ml_collections.ConfigDict, path: pathlib.Path, progress: bool) -> None:
    clip, _ = pretrain(config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_safetensors(clip, tmp)
        os.replace(tmp, path)  # atomic: readers see no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
