"""Transformer pieces shared by both CLIP towers, and causal attention after a shared prefix.

Submodules carry the names of OpenAI's checkpoint (`attn.in_proj`, `attn.out_proj`, `ln_1`, `ln_2`,
`mlp.c_fc`, `mlp.c_proj`, `resblocks`), so `weights.py` maps names almost one to one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-5


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI's sigmoid approximation of GELU: `x * sigmoid(1.702 x)`."""
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the error function (torch's and Hugging Face's 'gelu')."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATION_FNS = {"quick_gelu": quick_gelu, "gelu": exact_gelu}


def layer_norm(width: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with CLIP's epsilon (1e-5)."""
    return nnx.LayerNorm(width, epsilon=LN_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class KeyValues(NamedTuple):
    """Keys and values of the tokens that precede a segment of a causal sequence.

    Each `[..., heads, P, head_dim]`; the leading dims broadcast against the segment's.
    """

    keys: jax.Array
    values: jax.Array


# On the CPU, attention over at least this many tokens runs one (image, head) at a time: each
# [T, T] block of logits then stays in cache between the two products and the softmax. At
# T = 1025 (ViT-B/16 at 512) that took the attention core from 48 to 26 ms per block on 2 cores
# (PyTorch's fused SDPA: 26 ms); see BENCHMARKS.md, "CLIP image tower". Accelerators keep the
# batched form (a sequential loop there would idle the device).
CPU_PER_HEAD_TOKENS = 256


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, prefix: KeyValues | None = None
) -> jax.Array:
    """Softmax attention of T queries over T keys, and over a prefix of P earlier tokens if given.

    Args:
        q: queries `[..., heads, T, head_dim]`, already scaled by `head_dim ** -0.5`.
        k: keys `[..., heads, T, head_dim]`.
        v: values `[..., heads, T, head_dim]`.
        causal: if True, token t sees only the tokens <= t of its own segment.
        prefix: keys and values of P tokens before these T (all of them visible), with leading
            dims that broadcast against q's (one prefix shared by many segments).

    Returns:
        `[..., heads, T, head_dim]`.
    """
    t = q.shape[-2]
    if prefix is None and not causal and t >= CPU_PER_HEAD_TOKENS and jax.default_backend() == "cpu":
        flat = [x.reshape(-1, *x.shape[-2:]) for x in (q, k, v)]
        out = jax.lax.map(lambda qkv: _softmax_attention(*qkv, None), flat)
        return out.reshape(q.shape[:-1] + v.shape[-1:])
    visible = jnp.tril(jnp.ones((t, t), bool)) if causal else None
    if prefix is None:
        return _softmax_attention(q, k, v, visible)
    p = prefix.keys.shape[-2]
    logits = (q @ k.swapaxes(-1, -2)).astype(jnp.float32)  # [..., heads, T, T]
    early = (q @ prefix.keys.swapaxes(-1, -2)).astype(jnp.float32)  # [..., heads, T, P]
    logits = jnp.concatenate([early, logits], axis=-1)
    own = jnp.ones((t, t), bool) if visible is None else visible
    visible = jnp.concatenate([jnp.ones((t, p), bool), own], axis=-1)
    weights = jax.nn.softmax(jnp.where(visible, logits, -jnp.inf), axis=-1).astype(v.dtype)
    return weights[..., :p] @ prefix.values + weights[..., p:] @ v


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array | None) -> jax.Array:
    """`softmax(q k^T) v` over `[..., T, head_dim]`, masked where `visible` is False."""
    logits = (q @ k.swapaxes(-1, -2)).astype(jnp.float32)
    if visible is not None:
        logits = jnp.where(visible, logits, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1).astype(v.dtype) @ v


class MultiheadAttention(nnx.Module):
    """Self-attention with fused q, k, v input projection (torch.nn.MultiheadAttention layout)."""

    def __init__(self, width: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.heads = heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = nnx.Linear(width, 3 * width, **kw)
        self.out_proj = nnx.Linear(width, width, **kw)

    def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Tokens `[..., T, W]` -> q (scaled), k, v, each `[..., heads, T, W / heads]`."""
        *lead, t, w = x.shape
        head_dim = w // self.heads
        # Heads-first batched matmuls: on XLA:CPU about 2x faster than dot_product_attention's
        # [B, T, N, H] layout at 1025 tokens (ViT-B/16 at 512x512, measured on 2 cores).
        qkv = self.in_proj(x).reshape(*lead, t, 3, self.heads, head_dim)
        nd = len(lead)
        qkv = qkv.transpose(nd + 1, *range(nd), nd + 2, nd, nd + 3)  # [3, ..., heads, T, H]
        return qkv[0] * head_dim**-0.5, qkv[1], qkv[2]

    def merge_heads(self, out: jax.Array) -> jax.Array:
        """`[..., heads, T, H]` -> output projection `[..., T, W]`."""
        *lead, heads, t, head_dim = out.shape
        return self.out_proj(out.swapaxes(-2, -3).reshape(*lead, t, heads * head_dim))

    def __call__(self, x: jax.Array, *, causal: bool = False) -> jax.Array:
        """Attends over the token axis.

        Args:
            x: tokens `[..., T, W]`.
            causal: if True, token t attends only to tokens <= t (text tower).

        Returns:
            `[..., T, W]`.
        """
        q, k, v = self.project(x)
        return self.merge_heads(attend(q, k, v, causal=causal))

    def extend(self, x: jax.Array, prefix: KeyValues | None) -> tuple[jax.Array, KeyValues]:
        """Causal attention of a segment `[..., T, W]` that continues after `prefix` (or starts).

        Returns:
            The attention output `[..., T, W]` and the segment's own keys and values
            (`[..., heads, T, W / heads]`), for segments that continue after this one.
        """
        q, k, v = self.project(x)
        return self.merge_heads(attend(q, k, v, causal=True, prefix=prefix)), KeyValues(k, v)

    def value_path(self, x: jax.Array) -> jax.Array:
        """Value projection then output projection, without any mixing of tokens.

        This is what attention returns when every token attends only to itself: the MaskCLIP
        reading of the last block. Args: `x` `[..., W]`; returns `[..., W]`.
        """
        w = x.shape[-1]
        kernel = self.in_proj.kernel[...][:, 2 * w :]
        bias = self.in_proj.bias[...][2 * w :]
        dtype = self.in_proj.dtype or x.dtype
        v = x.astype(dtype) @ kernel.astype(dtype) + bias.astype(dtype)
        return self.out_proj(v)


class MLP(nnx.Module):
    """Two-layer feed-forward block, hidden width `hidden` (4W in OpenAI's models)."""

    def __init__(self, width: int, activation: str, *, hidden: int, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_fc = nnx.Linear(width, hidden, **kw)
        self.c_proj = nnx.Linear(hidden, width, **kw)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[..., W] -> [..., W]`."""
        return self.c_proj(ACTIVATION_FNS[self.activation](self.c_fc(x)))


class ResidualAttentionBlock(nnx.Module):
    """Pre-norm block: `x + attn(ln_1(x))`, then `+ mlp(ln_2(.))`."""

    def __init__(self, width: int, heads: int, activation: str, *, mlp_width: int, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = layer_norm(width, **kw)
        self.attn = MultiheadAttention(width, heads, **kw)
        self.ln_2 = layer_norm(width, **kw)
        self.mlp = MLP(width, activation, hidden=mlp_width, **kw)

    def __call__(self, x: jax.Array, *, causal: bool = False) -> jax.Array:
        """`[B, T, W] -> [B, T, W]`."""
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))

    def extend(self, x: jax.Array, prefix: KeyValues | None) -> tuple[jax.Array, KeyValues]:
        """The causal block on a segment `[..., T, W]` that continues after `prefix` (or starts).

        Returns the block output `[..., T, W]` and the segment's keys and values in this block
        (see `MultiheadAttention.extend`).
        """
        out, keys_values = self.attn.extend(self.ln_1(x), prefix)
        x = x + out
        return x + self.mlp(self.ln_2(x)), keys_values

    def value_path(self, x: jax.Array) -> jax.Array:
        """The block with attention replaced by its value path (MaskCLIP).

        `y = x + out_proj(v_proj(ln_1(x)))`, then `y + mlp(ln_2(y))`: residual and MLP kept.
        Tokens do not interact, so any subset (e.g. only the patch tokens) may be passed.

        Args:
            x: block input `[..., W]`.

        Returns:
            `[..., W]`.
        """
        y = x + self.attn.value_path(self.ln_1(x))
        return y + self.mlp(self.ln_2(y))


class Transformer(nnx.Module):
    """A stack of residual attention blocks (`resblocks`)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        activation: str,
        *,
        mlp_width: int | None = None,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        self.resblocks = nnx.List(
            [
                ResidualAttentionBlock(
                    width,
                    heads,
                    activation,
                    mlp_width=mlp_width or 4 * width,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for _ in range(layers)
            ]
        )

    def __call__(self, x: jax.Array, *, causal: bool = False, remat: bool = False) -> jax.Array:
        """`[B, T, W] -> [B, T, W]`.

        With `remat`, each block is rematerialised (`jax.checkpoint`): its activations are recomputed
        in the backward pass instead of stored. Forward values and gradients are unchanged.
        """
        run = _remat_if(remat, lambda block, y: block(y, causal=causal))
        for block in self.resblocks:
            x = run(block, x)
        return x

    def with_shared_prefix(self, prefix: jax.Array, x: jax.Array, *, remat: bool = False) -> jax.Array:
        """Causal sequences `prefix[g] ++ x[g, b]`, each prefix's states computed once.

        With a causal mask the states of the P prefix positions depend on the prefix only, so they
        are computed once per prefix (G sequences of length P), and in every block the B
        continuations of each prefix attend to its keys and values and causally to themselves.
        Equal to running the G * B full sequences of length P + S, on fewer tokens.

        Args:
            prefix: `[G, P, W]` states entering the first block (positions already added).
            x: `[G, B, S, W]` the continuations' states entering the first block.
            remat: rematerialise each block in the backward pass (see `__call__`).

        Returns:
            `[G, B, S, W]`: the continuations after the last block.
        """

        def run(block, prefix, x):
            prefix, keys_values = block.extend(prefix, None)  # [G, heads, P, H] each
            shared = KeyValues(*(a[:, None] for a in keys_values))  # broadcast over B
            return prefix, block.extend(x, shared)[0]

        run = _remat_if(remat, run)
        for block in self.resblocks:
            prefix, x = run(block, prefix, x)
        return x


def _remat_if(remat: bool, fn):
    """`fn(block, *arrays)`, rematerialised with `jax.checkpoint` when `remat`.

    The checkpointed function is pure (the block's state goes in as an argument), so nothing is
    written back to the block from inside the checkpoint's trace.
    """
    if not remat:
        return fn

    def rematerialised(block, *arrays):
        graphdef, state = nnx.split(block)
        pure = jax.checkpoint(lambda state, *a: fn(nnx.merge(graphdef, state), *a))
        return pure(state, *arrays)

    return rematerialised
