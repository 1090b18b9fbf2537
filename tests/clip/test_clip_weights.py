"""Checkpoint formats, dtypes, strictness and the errors of `zegot_jax.clip.load`."""

import re
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx

from zegot_jax import clip
from zegot_jax.errors import MissingDependency

SPEC = clip.CLIPSpec(
    embed_dim=32,
    image_size=24,
    patch_size=8,
    vision_width=128,
    vision_layers=2,
    vision_heads=2,
    text_width=64,
    text_layers=2,
    text_heads=1,
    context_length=9,
    vocab_size=500,
)
# No known variant has SPEC's widths, so files without a config need its heads.
HEADS = {"vision_heads": 2, "text_heads": 1}


@pytest.fixture(scope="module")
def original():
    model = clip.CLIP(SPEC, rngs=nnx.Rngs(0))
    return model, clip.state_dict(model)


class Holder(torch.nn.Module):
    """A scriptable module tree that only holds tensors (stands in for OpenAI's TorchScript)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_file(state: dict[str, np.ndarray], path) -> None:
    root = Holder()
    for name, value in state.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(torch.from_numpy(value.copy())))
    for extra, value in (("input_resolution", 24), ("context_length", 9), ("vocab_size", 500)):
        root.register_buffer(extra, torch.tensor(value))
    torch.jit.script(root).save(str(path))


def assert_state_equal(model, expected: dict[str, np.ndarray]):
    got = clip.state_dict(model)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value.astype(np.float32), err_msg=name)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_fp16_loads_as_float32(original, tmp_path):
    model, state = original
    half = {k: v.astype(np.float16) for k, v in state.items()}
    torchscript_file(half, tmp_path / "ViT-tiny.pt")
    loaded = clip.load(tmp_path / "ViT-tiny.pt", **HEADS)
    assert loaded.spec == SPEC
    leaves = jax.tree.leaves(nnx.state(loaded, nnx.Param))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    assert_state_equal(loaded, half)
    images = np.random.default_rng(0).standard_normal((1, 24, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.encode_image(images), model.encode_image(images), rtol=2e-2, atol=2e-2)


def test_open_clip_training_checkpoint_and_bin(original, tmp_path):
    _, state = original
    nested = {"epoch": 3, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}}
    torch.save(nested, tmp_path / "epoch_3.pt")
    assert_state_equal(clip.load(tmp_path / "epoch_3.pt", activation="quick_gelu", **HEADS), state)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "model.bin")
    assert_state_equal(clip.load(tmp_path / "model.bin", activation="quick_gelu", **HEADS), state)


def test_bfloat16_safetensors(original, tmp_path):
    _, state = original
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    safetensors.numpy.save_file(bf16, tmp_path / "bf16.safetensors")
    assert_state_equal(clip.load(tmp_path / "bf16.safetensors", activation="gelu", **HEADS), bf16)
    kept = clip.load(tmp_path / "bf16.safetensors", param_dtype=jnp.bfloat16, activation="gelu", **HEADS)
    leaves = jax.tree.leaves(nnx.state(kept, nnx.Param))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.bfloat16)}


def test_save_safetensors_round_trip_with_uncommon_heads(tmp_path):
    spec = clip.get_spec("tiny")  # widths 48 and 32: heads cannot come from width // 64
    model = clip.CLIP(spec, rngs=nnx.Rngs(1))
    clip.save_safetensors(model, tmp_path / "tiny.safetensors")
    loaded = clip.load(tmp_path / "tiny.safetensors")
    assert loaded.spec == spec
    images = np.random.default_rng(1).standard_normal((2, 40, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode_image(images), model.encode_image(images))
    state = safetensors.numpy.load_file(tmp_path / "tiny.safetensors")
    del state["ln_final.bias"]
    safetensors.numpy.save_file(state, tmp_path / "bare.safetensors")  # no metadata
    with pytest.raises(ValueError, match="Cannot infer the vision heads"):
        clip.load(tmp_path / "bare.safetensors")


def test_strict_loading_lists_every_problem(original, tmp_path):
    _, state = original
    broken = dict(state)
    del broken["visual.ln_post.bias"]
    broken["visual.extra_head.weight"] = np.zeros((2, 2), np.float32)
    broken["ln_final.weight"] = np.ones(63, np.float32)
    safetensors.numpy.save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError) as info:
        clip.load(tmp_path / "broken.safetensors", activation="quick_gelu", **HEADS)
    message = str(info.value)
    assert re.search(r"missing: \['visual\.ln_post\.bias'\]", message)
    assert re.search(r"unexpected: \['visual\.extra_head\.weight'\]", message)
    assert "ln_final.weight: checkpoint (63,) vs model (64,)" in message


def test_not_clip_and_truncated_files(original, tmp_path):
    _, state = original
    safetensors.numpy.save_file(
        {"encoder.weight": np.zeros((3, 3), np.float32)}, tmp_path / "other.safetensors"
    )
    with pytest.raises(ValueError, match="Not a CLIP ViT checkpoint"):
        clip.load(tmp_path / "other.safetensors")
    safetensors.numpy.save_file(state, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        clip.load(tmp_path / "cut.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        clip.load(tmp_path / "cut.pt")


def test_missing_file_and_missing_torch(original, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="No CLIP checkpoint"):
        clip.load(tmp_path / "nothing.pt")
    _, state = original
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(MissingDependency, match="needs torch"):  # one line at the entry points
        clip.load(tmp_path / "m.pt")


def test_hub_ids_and_variant_names(original, tmp_path, monkeypatch):
    _, state = original
    safetensors.numpy.save_file(state, tmp_path / "open_clip_model.safetensors")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append(repo_id)
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    assert_state_equal(clip.load("ViT-B/16", activation="quick_gelu", **HEADS), state)
    assert_state_equal(clip.load("someone/clip-model", activation="quick_gelu", **HEADS), state)
    assert calls == ["openai/clip-vit-base-patch16", "someone/clip-model"]


def test_offline_hub_miss_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="fetching .* from the Hugging Face hub failed"):
        clip.load("nobody/not-a-clip-model")


def test_a_bare_state_dict_needs_its_activation(original, tmp_path):
    _, state = original
    safetensors.numpy.save_file(state, tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="does not say which activation.*activation='quick_gelu'"):
        clip.load(tmp_path / "bare.safetensors")
    assert clip.load(tmp_path / "bare.safetensors", activation="gelu", **HEADS).spec.activation == "gelu"
    (tmp_path / "open_clip_config.json").write_text(
        '{"model_cfg": {"vision_cfg": {"width": 128, "head_width": 32}, "text_cfg": {"heads": 2}}}'
    )
    spec = clip.load(tmp_path / "bare.safetensors").spec  # open_clip's config says GELU and heads
    assert (spec.activation, spec.vision_heads, spec.text_heads) == ("gelu", 4, 2)


def test_non_finite_or_integer_weights_are_refused(original, tmp_path):
    _, state = original
    nan = dict(state, **{"ln_final.weight": np.full(64, np.nan, np.float32)})
    safetensors.numpy.save_file(nan, tmp_path / "nan.safetensors")
    with pytest.raises(
        ValueError,
        match=r"non-finite values \(NaN or Inf\) in 1 tensor: "
        r"ln_final\.weight",
    ) as info:
        clip.load(tmp_path / "nan.safetensors", activation="gelu", **HEADS)
    assert "\n" not in str(info.value)
    ints = {k: np.asarray(v * 100, np.int64) for k, v in state.items()}
    safetensors.numpy.save_file(ints, tmp_path / "int.safetensors")
    with pytest.raises(ValueError, match=r"holds int64 tensors where CLIP weights are floats"):
        clip.load(tmp_path / "int.safetensors", activation="gelu", **HEADS)


def test_heads_of_an_unknown_width_must_be_given(original, tmp_path):
    # No variant has width 128; width // 64 would be guessed (wrong for open_clip's ViT-H/14,
    # 16 heads of 80 at width 1280), so the heads are asked for.
    _, state = original
    safetensors.numpy.save_file(state, tmp_path / "h.safetensors")
    with pytest.raises(
        ValueError,
        match=r"attention heads its vision tower of width 128 has.*"
        r"pass vision_heads= to clip.load",
    ) as info:
        clip.load(tmp_path / "h.safetensors", activation="quick_gelu", text_heads=1)
    assert "\n" not in str(info.value)
    loaded = clip.load(tmp_path / "h.safetensors", activation="quick_gelu", vision_heads=4, text_heads=1)
    assert (loaded.spec.vision_heads, loaded.spec.text_heads) == (4, 1)  # as given


@pytest.mark.parametrize(
    "metadata",
    [
        {"vision_heads": "two", "text_heads": "1", "activation": "gelu"},
        {"vision_heads": "2", "activation": "gelu"},
        {"vision_heads": "2", "text_heads": "1", "activation": "relu"},
    ],
)
def test_damaged_metadata_is_named(original, tmp_path, metadata):
    _, state = original
    safetensors.numpy.save_file(
        state, tmp_path / "m.safetensors", metadata={"format": "zegot_jax.clip", **metadata}
    )
    with pytest.raises(ValueError, match=r"m.safetensors: its zegot_jax.clip metadata is damaged"):
        clip.load(tmp_path / "m.safetensors")
    assert clip.load(tmp_path / "m.safetensors", activation="gelu", **HEADS).spec.text_heads == 1
