"""The text tower on sequences that share a prefix: equal to running every whole sequence."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zegot_jax import clip
from zegot_jax.clip.layers import KeyValues, attend


def _rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _whole(model, prefix, suffix, eot):
    """Reference: the N * K concatenated sequences through `encode_embedded_text`, `[N, K, D]`."""
    (n, p, w), k = prefix.shape, suffix.shape[0]
    x = jnp.concatenate(
        [
            jnp.broadcast_to(prefix[:, None], (n, k, p, w)),
            jnp.broadcast_to(suffix[None], (n, k, *suffix.shape[1:])),
        ],
        axis=2,
    )
    return model.encode_embedded_text(x.reshape(n * k, -1, w), jnp.tile(eot, n)).reshape(n, k, -1)


def _inputs(spec, n, p, k, s, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    prefix = jax.random.normal(keys[0], (n, p, spec.text_width))
    suffix = jax.random.normal(keys[1], (k, s, spec.text_width))
    eot = jax.random.randint(keys[2], (k,), p, p + s)
    return prefix, suffix, eot


def test_attention_after_a_prefix_equals_attention_over_the_whole_sequence():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 7, 4))  # [2, heads 5, T 7, H 4]
    whole = attend(q, k, v, causal=True)
    early = KeyValues(k[:, :, :3], v[:, :, :3])
    later = attend(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], causal=True, prefix=early)
    np.testing.assert_allclose(later, whole[:, :, 3:], rtol=1e-6, atol=1e-6)
    # One prefix broadcast over a group of segments (leading dim 1).
    shared = KeyValues(k[:1, :, :3], v[:1, :, :3])
    group = attend(q[:1, :, 3:], k[:1, :, 3:], v[:1, :, 3:], causal=True, prefix=shared)
    np.testing.assert_allclose(group, whole[:1, :, 3:], rtol=1e-6, atol=1e-6)


def test_shared_prefix_equals_whole_sequences_and_their_gradients(tiny_clip):
    prefix, suffix, eot = _inputs(tiny_clip.spec, n=3, p=5, k=4, s=6)
    weights = jax.random.normal(jax.random.key(1), (3, 4, tiny_clip.spec.embed_dim))

    def loss(pre, suf, shared):
        feats = tiny_clip.encode_shared_prefix(pre, suf, eot) if shared else _whole(tiny_clip, pre, suf, eot)
        return jnp.sum(weights * feats), feats

    run = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True), static_argnums=2)
    (_, shared), grads = run(prefix, suffix, True)
    (_, whole), expected = run(prefix, suffix, False)
    assert shared.shape == (3, 4, tiny_clip.spec.embed_dim)
    assert _rel(shared, whole) < 1e-5
    for got, want in zip(grads, expected, strict=True):
        assert np.abs(want).max() > 0 and _rel(got, want) < 1e-5


def test_shared_prefix_keeps_the_true_positions(tiny_clip):
    """Suffix tokens must get positions P.., not 0..: a shifted table changes the features."""
    prefix, suffix, eot = _inputs(tiny_clip.spec, n=2, p=4, k=3, s=5, seed=2)
    encode = jax.jit(lambda suf: tiny_clip.encode_shared_prefix(prefix, suf, eot))
    table = tiny_clip.positional_embedding[...]
    shifted = suffix + table[:5] - table[4:9]  # as if the suffix started at position 0
    assert _rel(encode(shifted), encode(suffix)) > 1e-3


def test_shared_prefix_rejects_bad_shapes(tiny_clip):
    spec = tiny_clip.spec
    prefix, suffix, eot = _inputs(spec, n=2, p=9, k=3, s=spec.context_length - 8)
    with pytest.raises(ValueError, match="context_length"):
        tiny_clip.encode_shared_prefix(prefix, suffix, eot)
    with pytest.raises(ValueError, match="3-D"):
        tiny_clip.encode_shared_prefix(prefix[0], suffix[:, :2], eot)


def test_shared_prefix_at_vit_b16_text_widths():
    """ViT-B/16's text tower (12 blocks of width 512, 8 heads), a one-block image tower."""
    spec = dataclasses.replace(clip.get_spec("ViT-B/16"), vision_width=64, vision_layers=1, vision_heads=1)
    model = clip.CLIP(spec, rngs=nnx.Rngs(0))
    prefix, suffix, eot = _inputs(spec, n=2, p=9, k=3, s=7)
    prefix, suffix = 0.02 * prefix, 0.02 * suffix  # token-embedding scale
    graphdef, state = nnx.split(model)

    def features(shared, state, pre):
        m = nnx.merge(graphdef, state)
        out = m.encode_shared_prefix(pre, suffix, eot) if shared else _whole(m, pre, suffix, eot)
        return out / jnp.linalg.norm(out, axis=-1, keepdims=True)

    weights = jax.random.normal(jax.random.key(1), (2, 3, spec.embed_dim))

    def loss(pre, state, shared):
        feats = features(shared, state, pre)
        return jnp.sum(weights * feats), feats

    run = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    (_, feats), grad = run(prefix, state, True)
    (_, feats_ref), grad_ref = run(prefix, state, False)
    assert _rel(feats, feats_ref) < 1e-5
    assert np.abs(grad_ref).max() > 0 and _rel(grad, grad_ref) < 1e-5
