"""The ZegOT segmenter: frozen CLIP features, DLFA per layer, MPOT-refined score maps.

Shapes: B images, K classes, N prompts, L selected layers, M = h*w pixel tokens, D = embed dim.
For each selected layer l the frozen token states go through ln_post and proj and are L2-normalised
(`V_l` `[B, M, D]`); the DLFA relationship descriptor turns the text features `t` `[K, N, D]` and the
global image embedding `g` `[B, D]` into per-image prompts `q_l = norm(W_l [g*t; t] + b_l)` (or the
zero-initialised residual `q_l = norm(t + W_l [g*t; t] + b_l)`, which starts as the identity);
`S_l = <V_l, q_l>` `[B, K, M, N]` is refined by MPOT into a score `s_l` (a plan-weighted sum of N
cosines), and the per-layer maps are averaged into the logits `[B, K, h, w]`: `s` itself, or with a
learned temperature and bias `exp(log_t) * s / N + b` (SigLIP's sigmoid-loss parametrisation).

Guards against over-fitting the seen classes (RESULTS.md measures each one), each a `model`
config field: template-word initial contexts (`prompt_init`), the residual DLFA
(`alignment_residual`), the temperature and bias (`learn_temperature`), a text-consistency loss
(`text_consistency_weight`, in the loss) and an inference-time ensemble with the training-free
template scores (`ensemble_weight`, see `training_free_logits`).
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from zegot_jax import clip as clip_lib
from zegot_jax import ot
from zegot_jax.models import prompts as prompts_lib
from zegot_jax.models.prompts import Trainable, l2_normalize

TRAINING_FREE = {
    "prompts": "templates",
    "alignment": False,
    "ot.enabled": False,
    "learn_temperature": False,
    "ensemble_weight": 0.0,
}
"""`model` fields that turn ZegOT into the training-free template baseline: hand-crafted prompts,
no DLFA, no OT, raw cosine scores (evaluated without a seen penalty: nothing was trained). It reads
only the deepest selected layer (`training_free_config`): MaskCLIP's training-free dense CLIP, whose
best features are the last block's (value path with `dense_mode='value'`)."""


def training_free_config(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of a `model` config section with `TRAINING_FREE` and the deepest layer only."""
    config = ml_collections.ConfigDict(model_config.to_dict())
    for key, value in TRAINING_FREE.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    config.layers = (max(model_config.layers),)
    return config


def transport(
    similarity: jax.Array,
    ot_config: ml_collections.ConfigDict,
    *,
    grid: tuple[int, int] | None = None,
    pixels: jax.Array | None = None,
    prompts: jax.Array | None = None,
) -> ot.MPOTOutput:
    """MPOT of `S [L, B, K, M, N]` as the `model.ot` config section says (what `segment` runs).

    `grid` `(h, w)`, `pixels` `[L, B, M, D]` and `prompts` `[L, B, K, N, D]` reach transports that
    read them (`zegot_jax.ot`); `model.ot.options` (absent in runs saved before it existed) is
    passed as the transport's options.
    """
    newton = ot_config.solver == "newton"
    options = ot_config.get("options", None)
    return ot.mpot(
        similarity,
        epsilon=ot_config.epsilon,
        tau=None if ot_config.tau >= 1.0 else ot_config.tau,
        num_iterations=ot_config.newton_steps if newton else ot_config.num_iterations,
        plan_gradient=ot_config.plan_gradient,
        uniform=not ot_config.enabled,
        solver=ot_config.solver,
        backward=ot_config.backward,
        domain=ot_config.domain,
        threshold=ot_config.threshold,
        options=_plain(options),
        grid=grid,
        pixels=pixels,
        prompts=prompts,
    )


def _plain(options) -> dict | None:
    """`model.ot.options` (a ConfigDict, a frozen one, a dict or None) as a plain dict."""
    if options is None:
        return None
    return options.to_dict() if hasattr(options, "to_dict") else dict(options)


PROMPTS = ("learned", "templates")  # model.prompts
GLOBAL_POOLS = ("class", "mean")  # model.global_pool
DENSE_MODES = ("standard", "value")  # model.dense_mode
PROMPT_INITS = ("templates", "random")  # model.prompt_init


class Alignment(nnx.Module):
    """DLFA relationship descriptor: `Linear(2D -> D)` on `[g * t ; t]`.

    Plain (OTSeg's): trunc-normal std 0.02 kernel, `q = norm(W [g*t; t] + b)`. Residual: zero
    kernel, `q = norm(t + W [g*t; t] + b)`, so at initialisation `q = t` (the model without DLFA)
    and training only moves away from CLIP's text-pixel alignment as far as the loss asks.
    """

    def __init__(self, dim: int, *, residual: bool, rngs: nnx.Rngs):
        init = jax.nn.initializers.truncated_normal(stddev=0.02)
        kernel = init(rngs.params(), (2 * dim, dim), jnp.float32)
        self.residual = residual
        self.kernel = Trainable(jnp.zeros_like(kernel) if residual else kernel)
        self.bias = Trainable(jnp.zeros((dim,), jnp.float32))

    def __call__(self, g: jax.Array, t: jax.Array) -> jax.Array:
        """g `[B, D]`, t `[K, N, D]` -> L2-normalised per-image prompts `[B, K, N, D]`."""
        gt = g[:, None, None, :] * t[None]
        tt = jnp.broadcast_to(t[None], gt.shape)
        q = jnp.concatenate([gt, tt], axis=-1) @ self.kernel[...] + self.bias[...]
        return l2_normalize(tt + q if self.residual else q)


class ZegOTOutput(NamedTuple):
    """What a forward pass returns.

    logits: `[B, K, h, w]`, the per-layer refined maps averaged.
    layer_logits: `[L, B, K, h, w]`, for deep supervision.
    similarity: `[L, B, K, h, w, N]` per-prompt cosine maps (before OT).
    plan: `[L, B, K, h, w, N]` transport plans scaled by M, so each pixel's row is its distribution
      over the N prompts (sums to 1 for the balanced problem).
    free_logits: `[B, K, h, w]` training-free template logits (`training_free_logits`) when
      `segment` was given reference features, else None.
    ot_marginal_error: `[]`, the largest marginal error of any balanced MPOT plan (near 0 when
      the solver converged; see `ot.warn_if_unconverged`), None without OT or when unbalanced.
    """

    logits: jax.Array
    layer_logits: jax.Array
    similarity: jax.Array
    plan: jax.Array
    free_logits: jax.Array | None = None
    ot_marginal_error: jax.Array | None = None


class ZegOT(nnx.Module):
    """Frozen CLIP + learned prompts + DLFA + MPOT. Only `Trainable` variables are ever updated."""

    def __init__(self, clip: clip_lib.CLIP, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        """Builds the trainable parts around an already loaded (frozen) CLIP.

        Args:
            clip: the CLIP model; its `nnx.Param`s stay frozen by type.
            config: the `model` section of an experiment config.
            rngs: initialisation randomness for the prompts and the projections.
        """
        spec = clip.spec
        bad = [i for i in config.layers if not 0 <= i < spec.vision_layers]
        if bad or not config.layers:
            raise ValueError(
                f"model.layers={tuple(config.layers)} must be non-empty 0-indexed "
                f"layers of a {spec.vision_layers}-layer image tower."
            )
        for field, choices in (
            ("prompts", PROMPTS),
            ("global_pool", GLOBAL_POOLS),
            ("dense_mode", DENSE_MODES),
            ("prompt_init", PROMPT_INITS),
        ):
            if config[field] not in choices:
                raise ValueError(f"model.{field}={config[field]!r}: use one of {choices}.")
        self.clip = clip
        self.config = config
        self.layers = tuple(int(i) for i in config.layers)
        self.prompt_learner = nnx.data(
            self._prompt_learner(clip, config, rngs) if config.prompts == "learned" else None
        )
        self.alignment = nnx.data(
            nnx.List(
                [
                    Alignment(spec.embed_dim, residual=config.alignment_residual, rngs=rngs)
                    for _ in self.layers
                ]
            )
            if config.alignment
            else None
        )
        # Temperature and bias of the refined score (SigLIP's init: t = 10, b = -10).
        self.score_scale = nnx.data(
            Trainable(jnp.log(jnp.asarray(config.temperature_init, jnp.float32)))
            if config.learn_temperature
            else None
        )
        self.score_bias = nnx.data(
            Trainable(jnp.asarray(config.bias_init, jnp.float32)) if config.learn_temperature else None
        )

    @staticmethod
    def _prompt_learner(
        clip: clip_lib.CLIP, config: ml_collections.ConfigDict, rngs: nnx.Rngs
    ) -> prompts_lib.PromptLearner:
        shape = (config.num_prompts, config.context_tokens, clip.spec.text_width)
        init = config.prompt_init_std * jax.random.normal(rngs.params(), shape, jnp.float32)
        if config.prompt_init == "templates":
            init = prompts_lib.template_context(clip, config.init_templates, config.context_tokens, init)
        # Runs saved before these two fields existed get the defaults: the values are the same.
        return prompts_lib.PromptLearner(
            *shape,
            init_std=config.prompt_init_std,
            rngs=rngs,
            init=init,
            prefix_shared=config.get("prefix_shared", True),
            remat=config.get("text_remat", False),
        )

    @property
    def num_prompts(self) -> int:
        """N: learned contexts, or the number of hand-crafted templates."""
        if self.prompt_learner is not None:
            return self.config.num_prompts
        return len(self.config.templates)

    def text_inputs(
        self, class_names: Sequence[str], context_length: int
    ) -> dict[str, jax.Array] | jax.Array:
        """What `text_features` needs for a vocabulary (computed once per vocabulary).

        Learned prompts: the token table (the contexts change while training). Templates: the
        finished features `[K, T, D]`.
        Learned prompts with `text_consistency_weight > 0` also carry `reference`, the frozen
        template features `[K, T, D]` the consistency loss compares with.
        """
        names = prompts_lib.check_vocabulary(class_names, self.config.max_classes)
        if self.prompt_learner is None:
            return self.reference_features(names, context_length)
        tokens, eot = prompts_lib.prompt_token_table(
            names, num_context=self.config.context_tokens, context_length=context_length
        )
        inputs = {"tokens": jnp.asarray(tokens), "eot": jnp.asarray(eot)}
        if self.config.text_consistency_weight > 0:
            inputs["reference"] = self.reference_features(names, context_length)
        return inputs

    def reference_features(self, class_names: Sequence[str], context_length: int) -> jax.Array:
        """Frozen hand-crafted template features `[K, T, D]` (`model.templates`), L2-normalised."""
        return prompts_lib.template_features(
            self.clip, class_names, self.config.templates, context_length=context_length
        )

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

    def segment(
        self, images: jax.Array, text_features: jax.Array, reference: jax.Array | None = None
    ) -> ZegOTOutput:
        """Refined score maps for images `[B, H, W, 3]` and text features `[K, N, D]`.

        With `reference` (template features `[K, T, D]`), the output also carries the
        training-free template logits of the same pixels (for `ensemble_weight`).
        """
        pixels, g = self.pixel_features(images)  # [L, B, h, w, D], [B, D]
        num_layers, b, h, w, d = pixels.shape
        if self.alignment is not None:
            q = jnp.stack([align(g, text_features) for align in self.alignment])  # [L,B,K,N,D]
        else:
            q = jnp.broadcast_to(text_features, (num_layers, b, *text_features.shape))
        flat = pixels.reshape(num_layers, b, h * w, d)
        sim = jnp.einsum("lbmd,lbknd->lbkmn", flat, q)
        result = transport(sim, self.config.ot, grid=(h, w), pixels=flat, prompts=q)
        k, n = sim.shape[2], sim.shape[-1]
        layer_logits = self.scale_score(result.score.reshape(num_layers, b, k, h, w), n)
        free = None if reference is None else self.training_free_logits(pixels, reference)
        return ZegOTOutput(
            logits=layer_logits.mean(axis=0),
            layer_logits=layer_logits,
            similarity=sim.reshape(num_layers, b, k, h, w, n),
            plan=(result.plan * (h * w)).reshape(num_layers, b, k, h, w, n),
            free_logits=free,
            ot_marginal_error=result.marginal_error.max()
            if self.config.ot.enabled and self.config.ot.tau >= 1.0
            else None,
        )

    def scale_score(self, score: jax.Array, num_prompts: int) -> jax.Array:
        """Logits from refined scores: `exp(log_t) * score / N + b`, or the score itself."""
        if self.score_scale is None:
            return score
        return jnp.exp(self.score_scale[...]) * score / num_prompts + self.score_bias[...]

    def training_free_logits(self, pixels: jax.Array, reference: jax.Array) -> jax.Array:
        """The training-free template baseline's class logits `[B, K, h, w]`.

        The mean over templates of the cosine between the frozen pixel features of the deepest
        selected layer (from `[L, B, h, w, D]`) and the template features `[K, T, D]`, times
        CLIP's own logit scale, so a softmax over classes gives CLIP's class probabilities. Its
        argmax is the prediction of `training_free_config` (templates, no DLFA, no OT, no seen
        penalty).
        """
        deepest = pixels[self.layers.index(max(self.layers))]
        cos = jnp.einsum("bhwd,ktd->bkhw", deepest, reference) / reference.shape[1]
        scale = jnp.exp(jax.lax.stop_gradient(self.clip.logit_scale[...])).astype(jnp.float32)
        return jnp.minimum(scale, 100.0) * cos

    def __call__(self, images: jax.Array, text_inputs: dict[str, jax.Array] | jax.Array) -> ZegOTOutput:
        """Text features from `text_inputs`, then `segment`."""
        return self.segment(images, self.text_features(text_inputs))
