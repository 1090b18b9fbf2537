"""`zegot_jax.inference`: loading a run, any vocabulary, any image size, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from inference_fixtures import random_image, save_run, smoke_config

from zegot_jax import clip, inference
from zegot_jax.data import class_names, transforms
from zegot_jax.evaluation import evaluator, memory
from zegot_jax.evaluation import segmenter as segmenter_lib
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional

VOCAB = ["cat", "dog", "grass"]  # cat and dog are seen VOC classes; grass is new


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip):
    """A saved smoke run and the split model it holds."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = smoke_config()
    return workdir, config, save_run(workdir, config, tiny_clip)


@pytest.fixture(scope="module")
def segmenter(run):
    workdir, _, _ = run
    return inference.Segmenter.from_run(workdir)


def test_from_run_restores_saved_params_and_config(run, segmenter):
    _, config, parts = run
    for got, want in zip(jax.tree.leaves(segmenter.params), jax.tree.leaves(parts.params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert segmenter.config.model.layers == tuple(config.model.layers)
    assert segmenter.config.eval.crop == config.eval.crop
    assert segmenter.run_class_names == tuple(class_names.VOC20)


def test_segment_shapes_calibration_and_details(segmenter):
    image = random_image(50, 70)
    result = segmenter.segment(image, VOCAB, details=True)
    k, n = len(VOCAB), segmenter.config.model.num_prompts
    assert result.class_names == tuple(VOCAB)
    assert result.label_map.shape == (50, 70) and result.label_map.dtype == np.int32
    assert result.scores.shape == (k, 50, 70)
    assert ((result.scores > 0) & (result.scores < 1)).all()
    # Seen classes lose eval.seen_penalty before the arg-max (as in evaluation); grass does not.
    penalty = np.asarray([0.1, 0.1, 0.0])[:, None, None]
    np.testing.assert_array_equal(result.label_map, np.argmax(result.scores - penalty, axis=0))
    plain = segmenter.segment(image, VOCAB, calibrate=False)
    np.testing.assert_array_equal(plain.label_map, np.argmax(plain.scores, axis=0))
    assert plain.similarity is None and plain.plan is None
    # Token-resolution maps of the whole-image pass (short side 32 -> 32 x 45 -> 32 x 48, patch 8).
    num_layers = len(segmenter.config.model.layers)
    assert result.similarity.shape == result.plan.shape == (num_layers, k, 4, 6, n)
    assert result.layer_logits.shape == (num_layers, k, 4, 6)
    np.testing.assert_allclose(result.plan.sum(-1), 1.0, atol=1e-3)
    assert 0 <= result.ot_marginal_error < 1e-2 and plain.ot_marginal_error is None
    score = n * (result.plan * result.similarity).sum(-1)  # the refined score, then t and b
    np.testing.assert_allclose(
        result.layer_logits, segmenter.model.scale_score(score, n), rtol=1e-4, atol=1e-4
    )


def test_padding_does_not_change_scores(segmenter):
    """A 32 x 32 image is one crop: the scores equal the model's own unpadded forward pass."""
    image = random_image(32, 32, seed=1)
    result = segmenter.segment(image, VOCAB, calibrate=False)
    tokens = segmenter.model.text_inputs(VOCAB, segmenter.config.clip.text_context_length)
    assert segmenter.text_features(VOCAB).shape[0] == 8

    @jax.jit
    def forward(params, frozen, tokens, images):
        model = functional.merge(segmenter.graphdef, params, frozen)
        logits = model(images, tokens).logits  # 3 classes, no padding
        return jax.nn.sigmoid(functional.upsample(logits, (32, 32)))[0]

    want = forward(segmenter.params, segmenter.frozen, tokens, jnp.asarray(transforms.normalize(image))[None])
    np.testing.assert_allclose(result.scores, np.asarray(want), atol=2e-5)


def test_same_bucket_and_size_do_not_recompile(segmenter):
    image = random_image(50, 70, seed=2)
    segmenter.segment(image, ["sky", "tree"])
    before = segmenter.num_compilations()
    features = segmenter.text_features(["sky", "tree"])
    assert segmenter.text_features(["sky", "tree"]) is features  # cached per vocabulary
    for vocab in (["a", "b", "c", "d", "e"], ["boat", "water"], ["x", "y", "z", "w"]):
        result = segmenter.segment(image, vocab)
        assert result.scores.shape == (len(vocab), 50, 70)
    assert segmenter.num_compilations() == before
    segmenter.text_features([f"class {i}" for i in range(9)])  # the next bucket compiles anew
    assert segmenter.num_compilations() == before + 1


def test_image_kinds_agree(segmenter, tmp_path):
    rgb = random_image(50, 70, seed=3)
    path = tmp_path / "im.png"
    PIL.Image.fromarray(rgb).save(path)
    rgba = np.concatenate([rgb, np.full((50, 70, 1), 7, np.uint8)], axis=-1)
    want = segmenter.segment(rgb, VOCAB).scores
    for image in (str(path), path, PIL.Image.fromarray(rgb), rgba):
        np.testing.assert_allclose(segmenter.segment(image, VOCAB).scores, want, atol=1e-6)
    grey = inference.load_image(rgb[..., 0])
    assert grey.shape == (50, 70, 3) and (grey[..., 2] == rgb[..., 0]).all()


def test_bad_inputs_fail_clearly(segmenter, tmp_path):
    image = random_image(32, 32)
    with pytest.raises(ValueError, match="empty"):
        segmenter.segment(image, [])
    with pytest.raises(ValueError, match="Duplicate"):
        segmenter.segment(image, ["cat", "Cat"])
    with pytest.raises(TypeError, match="uint8"):
        inference.load_image(image.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="shape"):
        inference.load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference.load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="Cannot read"):
        inference.load_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference.Segmenter.from_run(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        inference.Segmenter.from_run(tmp_path)


def test_processed_size_follows_eval_protocol():
    assert inference.processed_size(50, 70, short_side=32, patch=8, whole=False) == (32, 45)
    assert inference.processed_size(50, 70, short_side=32, patch=8, whole=True) == (32, 48)
    # The long side is capped at 4 x the short side, as in evaluation.
    assert inference.processed_size(10, 1000, short_side=32, patch=8, whole=False) == (1, 128)
    assert inference.processed_size(10, 1000, short_side=32, patch=8, whole=True) == (8, 128)


def test_from_model_wraps_in_memory_model(tiny_clip):
    config = smoke_config()
    config.eval.mode = "whole"
    model = build_lib.build_model(config, tiny_clip)
    seg = inference.Segmenter.from_model(model, config, vocab_bucket=4)
    result = seg.segment(random_image(20, 30), ["sky", "sea"])
    assert result.label_map.shape == (20, 30)
    assert seg.text_features(["sky", "sea"]).shape[0] == 4


def test_images_read_as_a_viewer_shows_them(tmp_path):
    pixels = random_image(10, 20)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    PIL.Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
    np.testing.assert_array_equal(inference.load_image(tmp_path / "phone.png"), np.rot90(pixels, -1))
    grey16 = np.full((4, 6), 32768, np.uint16)
    grey16[0, 0] = 65535
    PIL.Image.fromarray(grey16).save(tmp_path / "deep.png")
    deep = inference.load_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and deep[0, 0].tolist() == [255] * 3
    assert deep[1, 1].tolist() == [128] * 3  # scaled, not clipped to 255


def test_float_images_in_unit_range_are_scaled_and_others_refused(tmp_path):
    unit = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    PIL.Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    read = inference.load_image(tmp_path / "unit.tif")
    np.testing.assert_array_equal(read[..., 0], np.round(unit * 255).astype(np.uint8))
    assert read[-1, -1].tolist() == [255] * 3  # not an all-black image
    odd = unit * 1000 - 5
    PIL.Image.fromarray(odd, mode="F").save(tmp_path / "odd.tif")
    with pytest.raises(ValueError, match=r"odd.tif.*float values in \[-5, 995\].*8-bit"):
        inference.load_image(tmp_path / "odd.tif")


def test_a_string_vocabulary_and_a_directory_image_are_named(segmenter, tmp_path):
    with pytest.raises(
        TypeError,
        match=r"a list of class names, not the string 'tomato'.*"
        r"\['tomato'\]",
    ):
        segmenter.segment(random_image(8, 8), "tomato")
    with pytest.raises(FileNotFoundError, match="is a directory, not an image file"):
        inference.load_image(tmp_path)


def test_large_images_stream_one_class_at_a_time_with_identical_outputs(segmenter):
    names = ["cat", "dog", "grass", "sky", "car", "tree", "road", "water", "bird"]  # two buckets
    image = random_image(230, 170, seed=3)
    lean = segmenter.segment(image, names, full_scores=False)
    assert lean.scores is None
    # The way the scores were computed before: all classes materialised at full resolution.
    size = inference.processed_size(
        230, 170, short_side=segmenter.config.data.eval_short_side, patch=segmenter.patch, whole=False
    )
    batch = jnp.asarray(transforms.normalize(transforms.resize(image, size, nearest=False)))[None]
    predict = evaluator.make_predictor(segmenter.graphdef, segmenter.config)
    full = np.asarray(
        predict(segmenter.params, segmenter.frozen, segmenter.text_features(names), batch, (230, 170))
    )[: len(names)]
    penalty = np.asarray([0.1 * (n in ("cat", "dog", "bird", "car")) for n in names])
    np.testing.assert_array_equal(lean.label_map, np.argmax(full - penalty[:, None, None], 0))
    np.testing.assert_allclose(lean.score_mean, full.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(lean.score_max, full.max((1, 2)), rtol=1e-6)
    kept = segmenter.segment(image, names)
    np.testing.assert_array_equal(kept.label_map, lean.label_map)
    np.testing.assert_allclose(kept.scores, full, rtol=1e-6, atol=1e-7)


def test_an_image_too_large_for_memory_is_refused_with_an_estimate(segmenter, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)

    def no_resize(*_, **__):
        raise AssertionError("the image was resized before the memory check")

    monkeypatch.setattr(segmenter_lib.transforms, "resize", no_resize)
    with pytest.raises(ValueError, match=r"Segmenting a 70x50 image needs about .* GiB but 0.0 GiB"):
        segmenter.segment(random_image(50, 70), VOCAB)


def test_a_saved_hub_id_is_not_fetched_when_a_run_is_loaded(tmp_path, tiny_clip, monkeypatch):
    hub = tmp_path / "hub"
    hub.mkdir()
    clip.save_safetensors(tiny_clip, hub / "model.safetensors")
    calls = []

    def snapshot_download(repo_id, *, allow_patterns, local_files_only=False):
        calls.append(local_files_only)
        if local_files_only:
            raise OSError(f"{repo_id} is not in the cache")
        return str(hub)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    config = smoke_config()
    config.clip.weights = "someone/clip-model"
    save_run(str(tmp_path / "run"), config, tiny_clip)
    with pytest.raises(
        FileNotFoundError,
        match=r"'someone/clip-model' are not in the local "
        r"Hugging Face cache.*--clip-weights",
    ):
        inference.Segmenter.from_run(tmp_path / "run")
    assert calls == [True]  # the cache only
    loaded = inference.Segmenter.from_run(tmp_path / "run", clip_weights="someone/clip-model")
    assert calls[-1] is False and loaded.model.clip.spec == tiny_clip.spec
