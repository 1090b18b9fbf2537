"""Segment any image with any vocabulary using a trained ZegOT run.

    segmenter = Segmenter.from_run("runs/synthetic")   # also `zegot_jax.inference.Segmenter`
    result = segmenter.segment("photo.png", ["red ball", "grass", "sky"])
    result.label_map          # [H, W] int32 indices into result.class_names
    result.scores             # [K, H, W] sigmoid scores at the image's resolution

Images follow the evaluation protocol: resized so the short side is `data.eval_short_side`, scored
with a sliding window of `eval.crop` / `eval.stride` (or as a whole, `eval.mode='whole'`), and the
scores are resized back to the original resolution. `details=True` adds the per-layer score maps and
the per-prompt similarity maps and transport plans at token resolution, from one whole-image pass at
the processed size (rounded to multiples of the patch size).

Compiled functions are reused across vocabularies: a vocabulary of K names is padded to the next
multiple of `vocab_bucket` (padded classes never win the argmax and are dropped from the result),
so any vocabulary in the same bucket and an image of a size already seen cause no recompilation.
"""

import collections
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zegot_jax import ot, storage
from zegot_jax.configs.overrides import override
from zegot_jax.data import transforms
from zegot_jax.data.images import ImageLike, load_image
from zegot_jax.data.setup import DataSetup
from zegot_jax.evaluation import evaluator, memory
from zegot_jax.models import functional
from zegot_jax.models import prompts as prompts_lib
from zegot_jax.models.zegot import ZegOT
from zegot_jax.runs import checkpoint as ckpt_lib
from zegot_jax.runs import saved


class SegmentationResult(NamedTuple):
    """What `Segmenter.segment` returns (numpy arrays on the host).

    Attributes:
        class_names: the K names, in the order of the class axis.
        image: the input as uint8 `[H, W, 3]`.
        label_map: `[H, W]` int32, the arg-max class per pixel (after calibration).
        scores: `[K, H, W]` float32 sigmoid scores (before calibration); None when asked not to keep
          them (`full_scores=False`).
        layers: the CLIP layers (0-indexed) of the per-layer maps.
        layer_logits: `[L, K, h, w]` refined per-layer scores at token resolution, or None.
        similarity: `[L, K, h, w, N]` per-prompt cosine maps before OT, or None.
        plan: `[L, K, h, w, N]` transport plans (each pixel's row is its distribution over prompts),
          or None.
        score_mean, score_max: `[K]` mean and max of each class's full-resolution sigmoid score.
        ot_marginal_error: with details, the largest marginal error of the image's balanced MPOT
          plans (near 0 when converged; a one-time warning above `ot.MARGINAL_ERROR_WARNING`).
    """

    class_names: tuple[str, ...]
    image: np.ndarray
    label_map: np.ndarray
    scores: np.ndarray | None
    layers: tuple[int, ...]
    layer_logits: np.ndarray | None = None
    similarity: np.ndarray | None = None
    plan: np.ndarray | None = None
    score_mean: np.ndarray | None = None
    score_max: np.ndarray | None = None
    ot_marginal_error: float | None = None


def processed_size(height: int, width: int, *, short_side: int, patch: int, whole: bool) -> tuple[int, int]:
    """The size an image is scored at, as in evaluation.

    Aspect kept, short side `short_side` (long side at most 4 x `short_side`).

    For a whole-image pass (`whole=True`) both sides are rounded to multiples of the patch size; the
    sliding window pads crops itself.
    """
    size = transforms.rescale_size(height, width, (4 * short_side, short_side))
    size = (max(1, size[0]), max(1, size[1]))
    if whole:
        size = tuple(max(patch, round(s / patch) * patch) for s in size)
    return size


class Segmenter:
    """A trained ZegOT model ready for open-vocabulary inference (text features cached)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params: Any,
        graphdef: Any,
        frozen: Any,
        *,
        vocab_bucket: int = 8,
        text_cache_size: int = 32,
    ):
        """Wraps the pieces of a split model.

        Args:
            config: the run's config (reads `clip`, `model`, `data.eval_short_side`, `eval`).
            params: the `Trainable` state.
            graphdef: the model graph, from `functional.split_model`.
            frozen: the frozen state (CLIP), from `functional.split_model`.
            vocab_bucket: vocabularies are padded to a multiple of this (fewer recompilations).
            text_cache_size: how many vocabularies' text features are kept.
        """
        if vocab_bucket < 1:
            raise ValueError(f"vocab_bucket must be >= 1, got {vocab_bucket}.")
        if config.eval.mode not in ("slide", "whole"):
            raise ValueError(f"eval.mode={config.eval.mode!r}: use 'slide' or 'whole'.")
        self.config = config
        self.graphdef = graphdef
        self.params = jax.device_put(params)
        self.frozen = jax.device_put(frozen)
        self.vocab_bucket = vocab_bucket
        self.model: ZegOT = functional.merge(graphdef, self.params, self.frozen)
        self.patch = self.model.clip.spec.patch_size
        self._text_cache: collections.OrderedDict[tuple[str, ...], jax.Array] = collections.OrderedDict()
        self._text_cache_size = text_cache_size
        self._text_fn = jax.jit(lambda p, f, x: functional.merge(graphdef, p, f).text_features(x))
        logits_fn = evaluator.make_logits_fn(graphdef, config)

        def predict(params, frozen, text, reference, penalty, num_valid, image, out_size, keep_scores):
            # [1, Kp, h, w] at the scored size (ensemble log-scores when ensembling)
            logits = logits_fn(params, frozen, text, image, reference, num_valid)
            return evaluator.streamed_scores(
                logits,
                penalty,
                num_valid,
                out_size,
                keep_scores=keep_scores,
                activation=evaluator.score_activation(config, reference),
            )

        def details(params, frozen, text, image):
            out = functional.merge(graphdef, params, frozen).segment(image, text)
            return (out.layer_logits[:, 0], out.similarity[:, 0], out.plan[:, 0], out.ot_marginal_error)

        self._predict = jax.jit(predict, static_argnames=("out_size", "keep_scores"))
        self._details = jax.jit(details)

    @classmethod
    def from_run(
        cls,
        workdir: str | os.PathLike,
        *,
        clip_weights: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        **kwargs,
    ) -> "Segmenter":
        """Loads a training workdir.

        Args:
            workdir: the run's directory; its saved config and latest trainable parameters are used.
            clip_weights: CLIP weights to load instead of the config's `clip.weights`. Without
              them, a hub id saved in the config is read from the local Hugging Face cache only:
              loading a run fetches nothing (pass the hub id here to allow the download).
            overrides: dotted-key config changes for inference, e.g. `{'model.ot.epsilon': 0.2}`
              or `{'eval.mode': 'whole'}` (not ones that change parameter shapes).
            **kwargs: passed to the constructor (`vocab_bucket`, `text_cache_size`).
        """
        workdir = storage.normalise(workdir)
        saved.check_run(workdir)
        config = ckpt_lib.saved_config(workdir)
        if "model.ot.solver" not in (overrides or {}):  # else the caller chose another one
            ot.require_registered(config.model.ot.solver, f"The run {str(workdir)!r}")
        config = override(config, overrides)
        if clip_weights is not None:
            config.clip.weights = str(clip_weights)
        try:
            parts, params = saved.trained_params(config, str(workdir), offline=clip_weights is None)
        except FileNotFoundError as e:
            if clip_weights is not None or "offline loading" not in str(e):
                raise
            raise FileNotFoundError(
                f"{e} (`segment --clip-weights`, or Segmenter.from_run(clip_weights=...))"
            ) from e
        return cls(config, params, parts.graphdef, parts.frozen, **kwargs)

    @classmethod
    def from_model(cls, model: ZegOT, config: ml_collections.ConfigDict, **kwargs) -> "Segmenter":
        """Wraps an in-memory model (for example an untrained one, or one just trained)."""
        parts = functional.split_model(model)
        return cls(config, parts.params, parts.graphdef, parts.frozen, **kwargs)

    @functools.cached_property
    def _data(self):

        return DataSetup.from_config(self.config)

    @property
    def run_class_names(self) -> tuple[str, ...]:
        """The full class list of the dataset the run was trained on (seen and unseen)."""
        return self._data.class_names

    @property
    def seen_class_names(self) -> tuple[str, ...]:
        """Classes the run was trained on whose scores evaluation calibrates (inductive runs)."""
        return self._data.train_classes if self._data.seen_penalty(self.config) > 0 else ()

    def padded_size(self, num_classes: int) -> int:
        """The vocabulary size actually compiled for `num_classes` names."""
        return -(-num_classes // self.vocab_bucket) * self.vocab_bucket

    def text_features(self, class_names: Sequence[str]) -> jax.Array:
        """Text features `[K_padded, N, D]` of a vocabulary (cached; rows past K are padding)."""
        return self._vocabulary(class_names)[0]

    def _vocabulary(self, class_names: Sequence[str]) -> tuple[jax.Array, jax.Array | None]:
        """Cached text features and, for the ensemble, template features `[K_padded, T, D]`."""
        names = prompts_lib.check_vocabulary(class_names, self.config.model.max_classes)
        if names in self._text_cache:
            self._text_cache.move_to_end(names)
            return self._text_cache[names]
        k, kp = len(names), self.padded_size(len(names))
        context = self.config.clip.text_context_length
        inputs = self.model.text_inputs(names, context)
        pad = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], kp - k, axis=0)]) if kp > k else x
        if isinstance(inputs, dict):
            features = self._text_fn(self.params, self.frozen, jax.tree.map(pad, inputs))
        else:
            features = pad(inputs)
        reference = None
        if self.config.model.ensemble_weight > 0:
            reference = pad(self.model.reference_features(names, context))
        self._text_cache[names] = (features, reference)
        if len(self._text_cache) > self._text_cache_size:
            self._text_cache.popitem(last=False)
        return features, reference

    def num_compilations(self) -> int:
        """Compiled variants held by the jitted functions (grows with new shapes only)."""
        return sum(f._cache_size() for f in (self._text_fn, self._predict, self._details))

    def segment(
        self,
        image: ImageLike,
        class_names: Sequence[str] | None = None,
        *,
        details: bool = False,
        calibrate: bool = True,
        full_scores: bool = True,
    ) -> SegmentationResult:
        """Segments one image over a vocabulary.

        Args:
            image: a path, a PIL image or a uint8 array `[H, W, 3]` of any size.
            class_names: the vocabulary; None uses the run's own class list.
            details: also return per-layer maps, per-prompt similarities and transport plans.
            calibrate: subtract `eval.seen_penalty` from the scores of classes the run was trained
              on (as its evaluation does for inductive runs) before the arg-max.
            full_scores: return `scores` `[K, H, W]`; False leaves it None (the label map and the
              per-class mean and max are the same) and holds one class at full resolution at a
              time, for large images and vocabularies.

        Raises:
            ValueError: the image would need more memory than is available (with the estimate).

        Returns:
            A `SegmentationResult` at the image's resolution.
        """
        names = prompts_lib.check_vocabulary(
            self.run_class_names if class_names is None else class_names, self.config.model.max_classes
        )
        pixels = load_image(image)
        text, reference = self._vocabulary(names)
        k = len(names)
        penalty = np.zeros(text.shape[0], np.float32)
        if calibrate and self.config.eval.seen_penalty:
            seen = {n.strip().lower() for n in self.seen_class_names}
            penalty[:k] = [self.config.eval.seen_penalty * (n.strip().lower() in seen) for n in names]
        height, width = pixels.shape[:2]
        short = self.config.data.eval_short_side
        size = processed_size(
            height, width, short_side=short, patch=self.patch, whole=self.config.eval.mode == "whole"
        )
        memory.check_memory(
            memory.estimate_bytes(
                self.config,
                len(self.model.layers),
                self.patch,
                size,
                (height, width),
                text.shape[0],
                full_scores=full_scores,
                figures=details,
            ),
            f"Segmenting a {width}x{height} image",
        )
        batch = jnp.asarray(
            transforms.normalize(  # after the check: this is the first copy
                transforms.resize(pixels, size, nearest=False)
            )
        )[None]
        label_map, mean, top, scores = self._predict(
            self.params,
            self.frozen,
            text,
            reference,
            jnp.asarray(penalty),
            jnp.asarray(k, jnp.int32),
            batch,
            out_size=(height, width),
            keep_scores=full_scores,
        )
        extra = {}
        if details:
            whole = processed_size(height, width, short_side=short, patch=self.patch, whole=True)
            if whole != size:
                batch = jnp.asarray(transforms.normalize(transforms.resize(pixels, whole, nearest=False)))[
                    None
                ]
            layer_logits, similarity, plan, marginal = jax.device_get(
                self._details(self.params, self.frozen, text, batch)
            )
            extra = {
                "layer_logits": layer_logits[:, :k],
                "similarity": similarity[:, :k],
                "plan": plan[:, :k],
                "ot_marginal_error": None if marginal is None else float(marginal),
            }
            ot.warn_if_unconverged(extra["ot_marginal_error"], "segment")
        return SegmentationResult(
            class_names=names,
            image=pixels,
            label_map=np.asarray(label_map),
            scores=None if scores is None else np.asarray(scores)[:k],
            layers=self.model.layers,
            score_mean=np.asarray(mean)[:k],
            score_max=np.asarray(top)[:k],
            **extra,
        )
