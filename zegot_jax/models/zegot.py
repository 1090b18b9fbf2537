"""The ZegOT segmenter: frozen CLIP features, DLFA per layer, MPOT-refined score maps.

Shapes: B images, K classes, N prompts, L selected layers, M = h*w pixel tokens, D = embed dim.
For each selected layer l the frozen token states go through ln_post and proj and are L2-normalised
(`V_l` `[B, M, D]`); the DLFA relationship descriptor turns the text features `t` `[K, N, D]` and the
global image embedding `g` `[B, D]` into per-image prompts `q_l = norm(W_l [g*t; t] + b_l)`;
`S_l = <V_l, q_l>` `[B, K, M, N]` is refined by MPOT, and the per-layer maps are averaged into
the logits `[B, K, h, w]`.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from zegot_jax import clip as clip_lib
from zegot_jax import ot
from zegot_jax.models import prompts as prompts_lib
from zegot_jax.models.prompts import Trainable, l2_normalize


class Alignment(nnx.Module):
    """DLFA relationship descriptor: `Linear(2D -> D)` on `[g * t ; t]`, trunc-normal std 0.02."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.truncated_normal(stddev=0.02)
        self.kernel = Trainable(init(rngs.params(), (2 * dim, dim), jnp.float32))
        self.bias = Trainable(jnp.zeros((dim,), jnp.float32))

    def __call__(self, g: jax.Array, t: jax.Array) -> jax.Array:
        """g `[B, D]`, t `[K, N, D]` -> L2-normalised per-image prompts `[B, K, N, D]`."""
        gt = g[:, None, None, :] * t[None]
        pair = jnp.concatenate([gt, jnp.broadcast_to(t[None], gt.shape)], axis=-1)
        return l2_normalize(pair @ self.kernel[...] + self.bias[...])


class ZegOTOutput(NamedTuple):
    """What a forward pass returns.

    logits: `[B, K, h, w]`, the per-layer refined maps averaged.
    layer_logits: `[L, B, K, h, w]`, for deep supervision.
    similarity: `[L, B, K, h, w, N]` per-prompt cosine maps (before OT).
    plan: `[L, B, K, h, w, N]` transport plans scaled by M, so each pixel's row is its distribution
      over the N prompts (sums to 1 for the balanced problem).
    """

    logits: jax.Array
    layer_logits: jax.Array
    similarity: jax.Array
    plan: jax.Array


class ZegOT(nnx.Module):
    """Frozen CLIP + learned prompts + DLFA + MPOT. Only `Trainable` variables are ever updated."""

    def __init__(self, clip: clip_lib.CLIP, config: ml_collections.ConfigDict, *,
                 rngs: nnx.Rngs):
        """Builds the trainable parts around an already loaded (frozen) CLIP.

        Args:
          clip: the CLIP model; its `nnx.Param`s stay frozen by type.
          config: the `model` section of an experiment config.
          rngs: initialisation randomness for the prompts and the projections.
        """
        spec = clip.spec
        bad = [i for i in config.layers if not 0 <= i < spec.vision_layers]
        if bad or not config.layers:
            raise ValueError(f"model.layers={tuple(config.layers)} must be non-empty 0-indexed "
                             f"layers of a {spec.vision_layers}-layer image tower.")
        if config.prompts not in ("learned", "templates"):
            raise ValueError(f"model.prompts={config.prompts!r}: use 'learned' or 'templates'.")
        if config.global_pool not in ("class", "mean"):
            raise ValueError(f"model.global_pool={config.global_pool!r}: use 'class' or 'mean'.")
        if config.dense_mode not in ("standard", "value"):
            raise ValueError(f"model.dense_mode={config.dense_mode!r}: use 'standard' or 'value'.")
        self.clip = clip
        self.config = config
        self.layers = tuple(int(i) for i in config.layers)
        self.prompt_learner = nnx.data(prompts_lib.PromptLearner(
            config.num_prompts, config.context_tokens, spec.text_width,
            init_std=config.prompt_init_std, rngs=rngs) if config.prompts == "learned" else None)
        self.alignment = nnx.data(
            nnx.List([Alignment(spec.embed_dim, rngs=rngs) for _ in self.layers])
            if config.alignment else None)

    @property
    def num_prompts(self) -> int:
        """N: learned contexts, or the number of hand-crafted templates."""
        if self.prompt_learner is not None:
            return self.config.num_prompts
        return len(self.config.templates)

    def text_inputs(self, class_names: Sequence[str],
                    context_length: int) -> dict[str, jax.Array] | jax.Array:
        """What `text_features` needs for a vocabulary (computed once per vocabulary).

        Learned prompts: the token table (the contexts change while training). Templates: the
        finished features `[K, T, D]`.
        """
        names = prompts_lib.check_vocabulary(class_names, self.config.max_classes)
        if self.prompt_learner is None:
            return prompts_lib.template_features(self.clip, names, self.config.templates,
                                                 context_length=context_length)
        tokens, eot = prompts_lib.prompt_token_table(
            names, num_context=self.config.context_tokens, context_length=context_length)
        return {"tokens": jnp.asarray(tokens), "eot": jnp.asarray(eot)}

    def text_features(self, text_inputs: dict[str, jax.Array] | jax.Array) -> jax.Array:
        """L2-normalised text features `[K, N, D]` from `text_inputs(...)`."""
        if self.prompt_learner is None:
            return text_inputs
        return self.prompt_learner(self.clip, text_inputs["tokens"], text_inputs["eot"])

    def pixel_features(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-layer pixel embeddings `[L, B, h, w, D]` and the global embedding `[B, D]`.

        Both L2-normalised and float32, whatever the backbone's compute dtype.
        """
        last = self.clip.spec.vision_layers - 1
        dense = self.config.dense_mode if last in self.layers else None
        wanted = tuple(sorted({*self.layers, last})) if self.config.global_pool == "mean" else self.layers
        pooled, inter = self.clip.visual(images, layers=wanted, dense=dense)
        b, hh, ww = images.shape[0], images.shape[1], images.shape[2]
        h, w = hh // self.clip.spec.patch_size, ww // self.clip.spec.patch_size
        feats = []
        for layer in self.layers:
            if layer == last:
                v = inter["dense"]
            else:
                v = self.clip.visual.project(inter[f"layer_{layer}"][:, 1:])
            feats.append(v.reshape(b, h, w, -1).astype(jnp.float32))
        if self.config.global_pool == "mean":  # CLIPs trained on mean-pooled patch embeddings
            pooled = self.clip.visual.project(inter[f"layer_{last}"][:, 1:]).mean(axis=1)
        return l2_normalize(jnp.stack(feats)), l2_normalize(pooled.astype(jnp.float32))

    def segment(self, images: jax.Array, text_features: jax.Array) -> ZegOTOutput:
        """Refined score maps for images `[B, H, W, 3]` and text features `[K, N, D]`."""
        pixels, g = self.pixel_features(images)  # [L, B, h, w, D], [B, D]
        num_layers, b, h, w, d = pixels.shape
        if self.alignment is not None:
            q = jnp.stack([align(g, text_features) for align in self.alignment])  # [L,B,K,N,D]
        else:
            q = jnp.broadcast_to(text_features, (num_layers, b, *text_features.shape))
        sim = jnp.einsum("lbmd,lbknd->lbkmn", pixels.reshape(num_layers, b, h * w, d), q)
        cfg = self.config.ot
        result = ot.mpot(sim, epsilon=cfg.epsilon, num_iterations=cfg.num_iterations,
                         tau=None if cfg.tau >= 1.0 else cfg.tau,
                         plan_gradient=cfg.plan_gradient, uniform=not cfg.enabled,
                         implicit_diff=cfg.implicit_diff)
        k, n = sim.shape[2], sim.shape[-1]
        layer_logits = result.score.reshape(num_layers, b, k, h, w)
        return ZegOTOutput(
            logits=layer_logits.mean(axis=0),
            layer_logits=layer_logits,
            similarity=sim.reshape(num_layers, b, k, h, w, n),
            plan=(result.plan * (h * w)).reshape(num_layers, b, k, h, w, n),
        )

    def __call__(self, images: jax.Array, text_inputs: dict[str, jax.Array] | jax.Array
                 ) -> ZegOTOutput:
        """Text features from `text_inputs`, then `segment`."""
        return self.segment(images, self.text_features(text_inputs))


def count_trainable(model: ZegOT) -> int:
    """Number of scalars in `Trainable` variables."""
    state = nnx.state(model, Trainable)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
