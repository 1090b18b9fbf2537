"""CLIP image and text towers in Flax NNX, with the dense outputs that segmentation needs.

Images are `[B, H, W, 3]` float32, normalised with CLIP's mean and std (see `preprocess.py`).
Parameters are float32 `nnx.Param`s named after OpenAI's checkpoint; `dtype` is the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zegot_jax.clip.layers import Transformer, layer_norm
from zegot_jax.clip.positions import resize_pos_embed
from zegot_jax.clip.variants import CLIPSpec

__all__ = ["CLIP", "VisionTransformer", "resize_pos_embed"]

DENSE_MODES = (None, "standard", "value")


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


def check_images(images, patch_size: int) -> None:
    """Raises a clear error unless `images` is float `[B, H, W, 3]` with H, W multiples of patch."""
    shape, dtype = getattr(images, "shape", None), getattr(images, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"images must be an array [B, H, W, 3], got {type(images).__name__}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"images have dtype {dtype}; expected float [B, H, W, 3] normalised with CLIP "
            "mean/std. "
            "Convert uint8 images with zegot_jax.clip.normalize(images)."
        )
    if len(shape) != 4:
        raise ValueError(f"images must be 4-D [B, H, W, 3]; got shape {tuple(shape)}.")
    if shape[-1] != 3:
        if shape[1] == 3:
            raise ValueError(
                f"images of shape {tuple(shape)} look channels-first (NCHW); CLIP here takes NHWC "
                "[B, H, W, 3]: use images.transpose(0, 2, 3, 1)."
            )
        raise ValueError(f"images must have 3 channels (RGB) last; got shape {tuple(shape)}.")
    if shape[1] % patch_size or shape[2] % patch_size:
        raise ValueError(
            f"image height and width {tuple(shape[1:3])} must be multiples of the patch size "
            f"{patch_size}; resize or pad the images."
        )


def check_tokens(tokens, vocab_size: int, context_length: int) -> None:
    """Raises a clear error for token arrays that are not int `[B, L]` with ids in range.

    The range check runs only on concrete arrays (skipped under `jax.jit` tracing).
    """
    shape, dtype = getattr(tokens, "shape", None), getattr(tokens, "dtype", None)
    if shape is None or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"tokens must be an integer array [B, L] (from zegot_jax.clip.tokenize); "
            f"got {getattr(tokens, 'dtype', type(tokens).__name__)}."
        )
    if len(shape) != 2:
        raise ValueError(f"tokens must be 2-D [B, L]; got shape {tuple(shape)}.")
    if shape[1] > context_length:
        raise ValueError(f"token sequences have length {shape[1]} > context_length {context_length}.")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:
        values = np.asarray(tokens)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size}); got min {low}, max {high}.")


class VisionTransformer(nnx.Module):
    """CLIP's image tower: patch conv, class token, positions, ln_pre, blocks, ln_post, proj."""

    def __init__(self, spec: CLIPSpec, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        width, patch = spec.vision_width, spec.patch_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_size = patch
        self.dtype = dtype
        self.conv1 = nnx.Conv(3, width, (patch, patch), (patch, patch), padding="VALID", use_bias=False, **kw)
        scale = width**-0.5
        self.class_embedding = nnx.Param(_normal(rngs, (width,), scale, param_dtype))
        self.positional_embedding = nnx.Param(
            _normal(rngs, (spec.grid_size**2 + 1, width), scale, param_dtype)
        )
        self.ln_pre = layer_norm(width, **kw)
        self.transformer = Transformer(
            width,
            spec.vision_layers,
            spec.vision_heads,
            spec.activation,
            mlp_width=spec.mlp_width("vision"),
            **kw,
        )
        self.ln_post = layer_norm(width, **kw)
        self.proj = nnx.Param(_normal(rngs, (width, spec.embed_dim), scale, param_dtype))

    def project(self, tokens: jax.Array) -> jax.Array:
        """ln_post then proj: `[..., W] -> [..., D]` (not L2-normalised)."""
        return self.ln_post(tokens) @ self.proj[...].astype(self.dtype)

    def __call__(
        self, images: jax.Array, *, layers: Sequence[int] = (), dense: str | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Encodes images.

        Args:
            images: `[B, H, W, 3]` float, CLIP-normalised; H, W multiples of the patch size. The
                position table is resized to the `(H/p, W/p)` grid when it differs.
            layers: 0-indexed blocks whose output token states to return.
            dense: None, 'standard' (last block's patch tokens) or 'value' (patch tokens through the
                last block's value path, see `ResidualAttentionBlock.value_path`: patch tokens skip
                q-k attention, residual and MLP kept; the class token and `pooled` are unchanged).

        Returns:
            pooled: projected class embedding `[B, D]`.
            intermediates: `layer_{i}` -> `[B, 1 + h*w, W]` (class token first) for i in
                `layers`; `dense` -> `[B, h, w, D]` (ln_post + proj of patch tokens) if requested.
        """
        check_images(images, self.patch_size)
        if dense not in DENSE_MODES:
            raise ValueError(f"dense must be one of {DENSE_MODES}; got {dense!r}.")
        blocks = self.transformer.resblocks
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(
                f"layers {bad} out of range: the image tower has blocks 0..{len(blocks) - 1} (0-indexed)."
            )
        x = self.conv1(images.astype(self.dtype))
        b, h, w, width = x.shape
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, width))
        x = jnp.concatenate([cls, x.reshape(b, h * w, width)], axis=1)
        x = x + resize_pos_embed(self.positional_embedding[...], (h, w)).astype(x.dtype)
        x = self.ln_pre(x)
        intermediates = {}
        last_input = x
        for i, block in enumerate(blocks):
            last_input = x
            x = block(x)
            if i in layers:
                intermediates[f"layer_{i}"] = x
        pooled = self.project(x[:, 0])
        if dense is not None:
            patches = x[:, 1:] if dense == "standard" else blocks[-1].value_path(last_input[:, 1:])
            intermediates["dense"] = self.project(patches).reshape(b, h, w, -1)
        return pooled, intermediates


class CLIP(nnx.Module):
    """OpenAI CLIP: `visual` (image tower) and the text tower parts at the top level."""

    def __init__(self, spec: CLIPSpec, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        """Builds a randomly initialised model (load weights with `zegot_jax.clip.load`).

        Args:
            spec: the variant, e.g. `VARIANTS['ViT-B/16']`.
            rngs: random streams for initialisation.
            dtype: compute dtype (e.g. `jnp.bfloat16`); parameters stay `param_dtype`.
            param_dtype: storage dtype of the parameters.
        """
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.spec = spec
        self.dtype = dtype
        self.visual = VisionTransformer(spec, **kw)
        width = spec.text_width
        self.token_embedding = nnx.Embed(
            spec.vocab_size, width, embedding_init=nnx.initializers.normal(0.02), **kw
        )
        self.positional_embedding = nnx.Param(_normal(rngs, (spec.context_length, width), 0.01, param_dtype))
        self.transformer = Transformer(
            width, spec.text_layers, spec.text_heads, spec.activation, mlp_width=spec.mlp_width("text"), **kw
        )
        self.ln_final = layer_norm(width, **kw)
        self.text_projection = nnx.Param(_normal(rngs, (width, spec.embed_dim), width**-0.5, param_dtype))
        self.logit_scale = nnx.Param(jnp.asarray(np.log(1 / 0.07), param_dtype))

    def encode_image(self, images: jax.Array) -> jax.Array:
        """`[B, H, W, 3]` CLIP-normalised float -> `[B, D]` projected class embedding."""
        return self.visual(images)[0]

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """Token embedding only: `[B, L]` int -> `[B, L, W_text]`."""
        check_tokens(tokens, self.spec.vocab_size, self.spec.context_length)
        return self.token_embedding(tokens)

    def encode_embedded_text(self, x: jax.Array, eot_index: jax.Array, *, remat: bool = False) -> jax.Array:
        """Runs the text transformer on embedded tokens (e.g. with learned context vectors).

        Args:
            x: `[B, L, W_text]`, L <= context_length; positions `[:L]` are added here.
            eot_index: `[B]` int, position of each sequence's end-of-text token.
            remat: rematerialise each block in the backward pass (same values, less memory).

        Returns:
            `[B, D]`: ln_final then text_projection at `eot_index` (not L2-normalised).
        """
        self._check_embedded(x, 3, x.shape[1])
        x = x.astype(self.dtype) + self._text_positions(0, x.shape[1])
        x = self.transformer(x, causal=True, remat=remat)
        return self._text_output(x[jnp.arange(x.shape[0]), eot_index])

    def encode_shared_prefix(
        self, prefix: jax.Array, suffix: jax.Array, eot_index: jax.Array, *, remat: bool = False
    ) -> jax.Array:
        """Text features of every sequence `prefix[n] ++ suffix[k]`, each prefix encoded once.

        What `encode_embedded_text` gives for the N * K concatenated sequences (each prefix's
        states are computed once, see `Transformer.with_shared_prefix`); the suffix tokens keep
        their true positions `P .. P+S-1`.

        Args:
            prefix: `[N, P, W_text]` embedded tokens (e.g. SOS and learned context vectors).
            suffix: `[K, S, W_text]` embedded tokens that follow each prefix; P + S <=
                context_length.
            eot_index: `[K]` int, EOT position of each suffix in the whole sequence (>= P).
            remat: rematerialise each block in the backward pass.

        Returns:
            `[N, K, D]`: ln_final then text_projection at EOT (not L2-normalised).
        """
        length = prefix.shape[-2] + suffix.shape[-2]
        self._check_embedded(prefix, 3, length)
        self._check_embedded(suffix, 3, length)
        (n, p, width), (k, s, _) = prefix.shape, suffix.shape
        prefix = prefix.astype(self.dtype) + self._text_positions(0, p)
        suffix = suffix.astype(self.dtype) + self._text_positions(p, s)
        x = self.transformer.with_shared_prefix(
            prefix, jnp.broadcast_to(suffix, (n, k, s, width)), remat=remat
        )  # [N, K, S, W]
        return self._text_output(x[:, jnp.arange(k), eot_index - p])

    def _check_embedded(self, x: jax.Array, ndim: int, length: int) -> None:
        """Raises unless `x` is `[..., W_text]` with `ndim` dims and `length` fits the context."""
        if x.ndim != ndim or x.shape[-1] != self.spec.text_width:
            raise ValueError(
                f"embedded text must be {ndim}-D [..., {self.spec.text_width}]; got {tuple(x.shape)}."
            )
        if length > self.spec.context_length:
            raise ValueError(f"sequence length {length} > context_length {self.spec.context_length}.")

    def _text_positions(self, start: int, length: int) -> jax.Array:
        """Rows `start .. start+length-1` of the text position table `[length, W_text]`."""
        return self.positional_embedding[...][start : start + length].astype(self.dtype)

    def _text_output(self, x: jax.Array) -> jax.Array:
        """ln_final then text_projection of EOT states: `[..., W_text] -> [..., D]`."""
        return self.ln_final(x) @ self.text_projection[...].astype(self.dtype)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """`[B, L]` int token ids (from `tokenize`) -> `[B, D]`; EOT is the largest id."""
        x = self.embed_tokens(tokens)
        return self.encode_embedded_text(x, jnp.argmax(tokens, axis=-1))
