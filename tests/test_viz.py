"""`zegot_jax.viz`: colours, overlays and per-prompt grids (numpy results, no model needed)."""

import numpy as np
import PIL.Image
import pytest
from matplotlib.figure import Figure

from zegot_jax import viz
from zegot_jax.inference import SegmentationResult


def _result(details: bool = True) -> SegmentationResult:
    """A hand-made result: 3 classes on a 12 x 16 image, 2 layers, 2 x 2 tokens, 3 prompts."""
    rng = np.random.default_rng(0)
    label_map = np.zeros((12, 16), np.int32)
    label_map[:, 8:] = 2  # class 1 ('dog') is absent
    scores = rng.uniform(size=(3, 12, 16)).astype(np.float32)
    extra = {}
    if details:
        sim = rng.uniform(-1, 1, size=(2, 3, 2, 2, 3)).astype(np.float32)
        plan = rng.dirichlet(np.ones(3), size=(2, 3, 2, 2)).astype(np.float32)
        extra = {"similarity": sim, "plan": plan, "layer_logits": (3 * plan * sim).sum(-1)}
    return SegmentationResult(
        class_names=("cat", "dog", "grass"),
        image=rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
        label_map=label_map,
        scores=scores,
        layers=(5, 11),
        **extra,
    )


def test_palette_is_distinct_and_deterministic():
    colours = viz.palette(40)
    assert colours.shape == (40, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 40
    np.testing.assert_array_equal(viz.palette(40)[:5], viz.palette(5))


def test_blend_and_colorize():
    colours = np.asarray([[255, 0, 0], [0, 0, 255]], np.uint8)
    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.asarray([[0, 1, 255], [1, 0, 0]])
    np.testing.assert_array_equal(viz.colorize(labels, colours)[0, 2], [0, 0, 0])  # ignore: black
    mixed = viz.blend(image, labels, colours, alpha=0.5)
    np.testing.assert_array_equal(mixed[0, 0], [178, 50, 50])
    np.testing.assert_array_equal(viz.blend(image, labels, colours, alpha=0.0), image)
    with pytest.raises(ValueError, match="differ in size"):
        viz.blend(image, labels[:, :2], colours)
    with pytest.raises(ValueError, match="alpha"):
        viz.blend(image, labels, colours, alpha=1.5)


def test_overlay_figure_legend_lists_present_classes(tmp_path):
    fig = viz.overlay_figure(_result())
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["cat (50%)", "grass (50%)"]
    all_labels = viz.overlay_figure(_result(), present_only=False).legends[0].get_texts()
    assert len(all_labels) == 3
    viz.save(fig, tmp_path / "overlay.png")
    assert PIL.Image.open(tmp_path / "overlay.png").size[0] > 100


def test_prompt_grid_rows_and_columns(tmp_path):
    result = _result()
    fig = viz.prompt_grid(result, ["grass", "cat"], layer=1)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 * 2 * 3  # (2 classes x 2 kinds) rows x 3 prompts
    shown = images[0].images[0].get_array()
    np.testing.assert_allclose(shown, result.similarity[1, 2, :, :, 0])  # grass, layer 11, prompt 0
    assert "layer 11" in fig.get_suptitle()
    mean = viz.prompt_grid(result, ["cat"], kinds=("plan",))
    first = [ax for ax in mean.axes if ax.images][0].images[0].get_array()
    np.testing.assert_allclose(first, result.plan[:, 0, :, :, 0].mean(0), rtol=1e-6)
    # Default classes: the largest in the label map first.
    assert viz.pick_classes(result, limit=2) == [0, 2]
    assert viz.pick_classes(result, limit=3) == [0, 2]  # 'dog' covers no pixel
    viz.save(fig, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_prompt_grid_errors():
    with pytest.raises(ValueError, match="details=True"):
        viz.prompt_grid(_result(details=False))
    with pytest.raises(ValueError, match="not in this result"):
        viz.prompt_grid(_result(), ["horse"])
    with pytest.raises(ValueError, match="kinds"):
        viz.prompt_grid(_result(), kinds=("logits",))
    with pytest.raises(ValueError, match="layer=2"):
        viz.prompt_grid(_result(), layer=2)


def test_a_huge_image_is_drawn_at_display_size():
    label_map = np.zeros((4100, 300), np.int32)
    label_map[2000:] = 1
    result = SegmentationResult(
        class_names=("cat", "dog"),
        image=np.zeros((4100, 300, 3), np.uint8),
        label_map=label_map,
        scores=None,
        layers=(11,),
    )
    fig = viz.overlay_figure(result)
    shapes = [ax.images[0].get_array().shape[:2] for ax in fig.axes]
    assert shapes == [(1367, 100)] * 2  # every 3rd pixel: at most DISPLAY_MAX_SIDE per side
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["dog (51%)", "cat (49%)"]  # shares from the full-resolution label map
