"""The CLIP module itself: shapes, position resizing, dense modes, text split, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from zegot_jax import clip

TINY = clip.get_spec("tiny")


@pytest.fixture
def model(tiny_clip):
    """The session's random 'tiny' CLIP (tests/conftest.py); never mutated here."""
    return tiny_clip


def _images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _count(spec):
    """Parameter count of a CLIP ViT from its spec (12 W^2 + 13 W per residual block)."""
    w, wt, d, g = spec.vision_width, spec.text_width, spec.embed_dim, spec.grid_size
    block = lambda width: 12 * width * width + 13 * width
    vision = 3 * spec.patch_size**2 * w + w + (g * g + 1) * w + 4 * w + spec.vision_layers * block(w) + w * d
    text = spec.vocab_size * wt + spec.context_length * wt + spec.text_layers * block(wt) + 2 * wt + wt * d
    return vision + text + 1  # + logit_scale


def test_variant_table_matches_released_models():
    # Parameter counts of OpenAI's released models (transformers' CLIPModel has the same).
    released = {
        "ViT-B/32": 151_277_313,
        "ViT-B/16": 149_620_737,
        "ViT-L/14": 427_616_513,
        "ViT-L/14@336": 427_944_193,
    }
    assert {name: _count(clip.get_spec(name)) for name in released} == released
    assert clip.get_spec("ViT-L/14@336").grid_size == 24
    with pytest.raises(ValueError, match="Unknown CLIP variant"):
        clip.get_spec("ViT-H/14")


@pytest.mark.parametrize("name", ["tiny", "ViT-B/16"])
def test_module_builds_abstractly(name):
    spec = clip.get_spec(name)
    abstract = nnx.eval_shape(lambda: clip.CLIP(spec, rngs=nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    assert sum(int(np.prod(p.shape)) for p in params) == _count(spec)
    out = nnx.eval_shape(
        lambda m: m.visual(
            jnp.zeros((2, 2 * spec.image_size, spec.image_size, 3)), layers=(0,), dense="value"
        ),
        abstract,
    )
    grid = spec.grid_size
    assert out[0].shape == (2, spec.embed_dim)
    assert out[1]["layer_0"].shape == (2, 1 + 2 * grid * grid, spec.vision_width)
    assert out[1]["dense"].shape == (2, 2 * grid, grid, spec.embed_dim)


@pytest.mark.parametrize("grid", [(5, 5), (7, 7), (3, 3), (3, 8), (9, 2), (1, 1)])
def test_resize_pos_embed_equals_torch_bilinear(grid):
    table = np.random.default_rng(0).standard_normal((1 + 5 * 5, 6)).astype(np.float32)
    ours = np.asarray(clip.resize_pos_embed(jnp.asarray(table), grid))
    patch = torch.from_numpy(table[1:]).reshape(1, 5, 5, 6).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(patch, size=grid, mode="bilinear", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    np.testing.assert_array_equal(ours[0], table[0])
    np.testing.assert_allclose(ours[1:], ref, rtol=1e-6, atol=1e-6)


def test_dense_modes(model):
    images = _images((2, 48, 32, 3))
    pooled, inter = model.visual(images, layers=(1, 2), dense="standard")
    pooled_value, inter_value = model.visual(images, layers=(2,), dense="value")
    np.testing.assert_allclose(pooled_value, pooled, rtol=1e-6)
    np.testing.assert_allclose(inter_value["layer_2"], inter["layer_2"], rtol=1e-6)
    standard = model.visual.project(inter["layer_2"][:, 1:]).reshape(2, 6, 4, -1)
    np.testing.assert_allclose(inter["dense"], standard, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.visual.project(inter["layer_2"][:, 0]), pooled, rtol=1e-5)
    # 'value': the last block's patch tokens skip q-k attention (v -> out_proj), keep residual+MLP.
    block = model.visual.transformer.resblocks[2]
    x = inter["layer_1"][:, 1:]
    w = TINY.vision_width
    v = block.ln_1(x) @ block.attn.in_proj.kernel[...][:, 2 * w :] + block.attn.in_proj.bias[...][2 * w :]
    y = x + block.attn.out_proj(v)
    y = y + block.mlp(block.ln_2(y))
    expected = model.visual.project(y).reshape(2, 6, 4, -1)
    np.testing.assert_allclose(inter_value["dense"], expected, rtol=1e-5, atol=1e-5)
    assert np.abs(inter_value["dense"] - inter["dense"]).max() > 1e-2


def test_jit_and_bfloat16_compute(model):
    images = _images((1, 40, 40, 3))
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_image(x))
    np.testing.assert_allclose(encode(state, images), model.encode_image(images), rtol=1e-5, atol=1e-6)
    bf16 = clip.CLIP(TINY, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    out = bf16.encode_image(images)
    assert out.dtype == jnp.bfloat16
    ref = model.encode_image(images)
    assert np.abs(np.float32(out) - ref).max() / np.abs(ref).max() < 5e-2


def test_text_split_and_shorter_context(model):
    texts = ["a photo of a cat.", "a segment of a dining table."]
    long, short = clip.tokenize(texts, 16), clip.tokenize(texts, 10)
    features = model.encode_text(long)
    assert features.shape == (2, TINY.embed_dim)
    embedded = model.embed_tokens(long)
    assert embedded.shape == (2, 16, TINY.text_width)
    eot = np.argmax(long, axis=-1)
    np.testing.assert_allclose(model.encode_embedded_text(embedded, eot), features, rtol=1e-6)
    # Causal attention: what follows EOT never matters, so a shorter context gives the same.
    np.testing.assert_allclose(model.encode_text(short), features, rtol=1e-5, atol=1e-6)
    # Inserted context vectors change the result (the prompt-learning path is live).
    ctx = embedded.at[:, 1].add(jax.random.normal(jax.random.key(0), (TINY.text_width,)))
    assert np.abs(model.encode_embedded_text(ctx, eot) - features).max() > 1e-3


def test_bad_images(model):
    with pytest.raises(TypeError, match="normalize"):
        model.encode_image(np.zeros((1, 40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="NCHW"):
        model.encode_image(np.zeros((1, 3, 40, 40), np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        model.encode_image(np.zeros((1, 40, 40, 4), np.float32))
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        model.encode_image(np.zeros((1, 42, 40, 3), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        model.encode_image(np.zeros((40, 40, 3), np.float32))
    with pytest.raises(ValueError, match=r"layers \[3\] out of range"):
        model.visual(np.zeros((1, 40, 40, 3), np.float32), layers=(3,))
    with pytest.raises(ValueError, match="dense must be one of"):
        model.visual(np.zeros((1, 40, 40, 3), np.float32), dense="values")


def test_bad_tokens(model):
    tokens = clip.tokenize(["a cat"], 16)
    with pytest.raises(ValueError, match=r"\[0, 49408\); got min 0, max 49408"):
        model.encode_text(np.where(tokens == clip.EOT, 49408, tokens))
    with pytest.raises(ValueError, match="min -1"):
        model.encode_text(np.where(tokens == 0, -1, tokens))
    with pytest.raises(TypeError, match="integer"):
        model.encode_text(tokens.astype(np.float32))
    with pytest.raises(ValueError, match="context_length 16"):
        model.encode_text(clip.tokenize(["a cat"], 20))
    with pytest.raises(ValueError, match="2-D"):
        model.encode_text(tokens[0])
    # Under jit the ids are not concrete: no check, no host transfer, still runs.
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, t: nnx.merge(graphdef, s).encode_text(t))
    np.testing.assert_allclose(jitted(state, tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-6)


def test_normalize():
    images = np.array([[[[0, 128, 255]]]], np.uint8)
    out = np.asarray(clip.normalize(images))
    expected = (np.array([0, 128, 255]) / 255 - np.array(clip.MEAN)) / np.array(clip.STD)
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(TypeError, match="uint8"):
        clip.normalize(images.astype(np.float32))
