"""Parity of our CLIP with a random PyTorch `transformers.CLIPModel`, through every layout."""

import copy
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from clip_reference import (
    OPENAI_EXTRAS,
    assert_close,
    build_hf_clip,
    hf_to_openai_reference,
    random_tokens,
    set_torch_grid,
    torch_image,
    torch_text,
)

from zegot_jax import clip

LAYOUTS = ("hf_dir", "hf_file_alone", "openai_pt", "openai_safetensors")


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def reference(request, tmp_path_factory):
    """(activation, torch model, directory holding the four checkpoint layouts)."""
    act = request.param
    model = build_hf_clip(act)
    root = tmp_path_factory.mktemp(f"clip_{act}")
    model.save_pretrained(root / "hf")
    (root / "alone").mkdir()
    shutil.copy(root / "hf" / "model.safetensors", root / "alone" / "model.safetensors")
    state = hf_to_openai_reference(model)
    extras = {k: torch.tensor(v) for k, v in zip(OPENAI_EXTRAS, (40, 11, 1000), strict=True)}
    torch.save({**state, **extras}, root / "openai.pt")
    safetensors.torch.save_file(state, root / "openai.safetensors")
    return act, model, root


def load_layout(root, layout, act):
    """Loads one layout.

    Layouts without a config are told the activation and the heads (their widths are no known
    variant's).
    """
    path = {
        "hf_dir": root / "hf",
        "hf_file_alone": root / "alone" / "model.safetensors",
        "openai_pt": root / "openai.pt",
        "openai_safetensors": root / "openai.safetensors",
    }[layout]
    if layout == "hf_dir":
        return clip.load(path)
    return clip.load(path, activation=act, vision_heads=2, text_heads=1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_towers_match_torch(reference, layout):
    act, torch_model, root = reference
    model = load_layout(root, layout, act)
    assert model.spec.activation == act
    assert (model.spec.vision_heads, model.spec.text_heads) == (2, 1)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 40, 40, 3)).astype(np.float32)
    expected, hidden = torch_image(torch_model, images)
    pooled, inter = model.visual(images, layers=(0, 1, 2))
    assert_close(pooled, expected)
    for i in range(3):
        assert_close(inter[f"layer_{i}"], hidden[i])
    tokens = random_tokens(rng, 3, 11, 1000)
    assert_close(model.encode_text(tokens), torch_text(torch_model, tokens))


@pytest.mark.parametrize("grid", [7, 3])  # upsampled and downsampled position tables
def test_resized_positions_match_torch(reference, grid):
    act, torch_model, root = reference
    model = load_layout(root, "hf_dir", act)
    torch_model = copy.deepcopy(torch_model)
    set_torch_grid(torch_model, grid)
    images = np.random.default_rng(2).standard_normal((1, 8 * grid, 8 * grid, 3))
    images = images.astype(np.float32)
    expected, hidden = torch_image(torch_model, images)
    pooled, inter = model.visual(images, layers=(2,))
    assert_close(pooled, expected)
    assert_close(inter["layer_2"], hidden[2])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_odd_mlp_widths_per_tower(odd_mlp, layout):
    """MLP widths that are not 4x the width, different per tower, are inferred from the shapes.

    Such widths are open_clip's mlp_ratio and HF's intermediate_size; every layout is checked.
    """
    torch_model, root = odd_mlp
    model = load_layout(root, layout, "gelu")
    assert (model.spec.mlp_width("vision"), model.spec.mlp_width("text")) == (200, 100)
    rng = np.random.default_rng(4)
    images = rng.standard_normal((1, 40, 40, 3)).astype(np.float32)
    expected, _ = torch_image(torch_model, images)
    assert_close(model.visual(images)[0], expected)
    tokens = random_tokens(rng, 2, 11, 1000)
    assert_close(model.encode_text(tokens), torch_text(torch_model, tokens))


@pytest.fixture(scope="module")
def odd_mlp(tmp_path_factory):
    model = build_hf_clip("gelu", vision_mlp=200, text_mlp=100, seed=5)
    root = tmp_path_factory.mktemp("clip_odd_mlp")
    model.save_pretrained(root / "hf")
    (root / "alone").mkdir()
    shutil.copy(root / "hf" / "model.safetensors", root / "alone" / "model.safetensors")
    state = hf_to_openai_reference(model)
    extras = {k: torch.tensor(v) for k, v in zip(OPENAI_EXTRAS, (40, 11, 1000), strict=True)}
    torch.save({**state, **extras}, root / "openai.pt")
    safetensors.torch.save_file(state, root / "openai.safetensors")
    return model, root


def test_vit_b16_full_shape(tmp_path):
    """ViT-B/16 as released (shapes), random weights, HF directory layout."""
    torch_model = build_hf_clip(
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        patch=16,
        image_size=224,
        text_width=512,
        text_layers=12,
        text_heads=8,
        context=77,
        vocab=49408,
        embed=512,
    )
    with torch.no_grad():  # back to a CLIP-like scale so 12 blocks stay well conditioned
        for p in torch_model.parameters():
            p.mul_(0.5)
    torch_model.save_pretrained(tmp_path)
    model = clip.load(tmp_path)
    assert model.spec == clip.VARIANTS["ViT-B/16"]
    images = np.random.default_rng(3).standard_normal((1, 224, 224, 3)).astype(np.float32)
    expected, hidden = torch_image(torch_model, images)
    pooled, inter = model.visual(images, layers=(5, 7, 11))
    assert_close(pooled, expected)
    for i in (5, 7, 11):
        assert_close(inter[f"layer_{i}"], hidden[i])
    tokens = clip.tokenize(["a photo of a cat.", "a segment of a dining table."])
    assert_close(model.encode_text(tokens), torch_text(torch_model, tokens))
