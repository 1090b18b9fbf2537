"""Per-example image/label transforms (numpy + OpenCV), following mmsegmentation's pipeline.

Training: random rescale (ratio of a base scale, aspect kept), random crop with the category
max-ratio rule, horizontal flip, photometric distortion, CLIP normalisation, padding (label 255).
Evaluation: aspect-keeping resize of the image only. Labels are only ever resampled nearest.
Randomness comes from the `np.random.Generator` passed in, so a seed fixes every choice.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import cv2
import numpy as np
import PIL.Image

IGNORE = 255
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255.0
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255.0
_INV_STD = (1.0 / CLIP_STD).astype(np.float32)
LABEL_MODES = ("inductive", "transductive", "supervised")

cv2.setNumThreads(1)  # parallelism comes from grain workers, not from OpenCV threads


def decode_image(value: bytes | np.ndarray, source: object = "") -> np.ndarray:
    """Returns uint8 RGB `[H, W, 3]` from encoded bytes (JPEG/PNG) or an array."""
    if isinstance(value, bytes | bytearray | memoryview):
        image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"Cannot decode image {source}.")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = np.asarray(value)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Image {source} must be uint8 [H, W, 3]; got {image.dtype} {image.shape}.")
    return image


def decode_label(value: bytes | np.ndarray, source: object = "") -> np.ndarray:
    """Returns uint8 ids `[H, W]` from PNG bytes (grey or palette) or an array."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            label = np.asarray(PIL.Image.open(io.BytesIO(value)))
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot decode label {source}: {e}.") from e
    else:
        label = np.asarray(value)
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"Label {source} must be uint8 [H, W]; got {label.dtype} {label.shape}.")
    return label


def check_label(label: np.ndarray, num_classes: int, source: object = "") -> None:
    """Raises ValueError if `label` holds ids other than 0..num_classes-1 and 255."""
    bad_table = np.zeros(256, np.uint8)
    bad_table[num_classes:IGNORE] = 1
    if not cv2.countNonZero(cv2.LUT(np.ascontiguousarray(label), bad_table)):
        return
    bad = np.flatnonzero(np.bincount(label.ravel(), minlength=256)[num_classes:IGNORE])
    raise ValueError(
        f"Label {source} has ids {(bad + num_classes).tolist()[:10]} outside "
        f"0..{num_classes - 1} and {IGNORE}."
    )


def label_lut(mode: str, num_classes: int, unseen: Sequence[int]) -> np.ndarray:
    """Returns uint8 `[256]` mapping full-space ids to the training ids of `mode`.

    'inductive': seen classes -> their rank among seen classes (0..S-1); unseen and ignore -> 255.
    'transductive' and 'supervised': identity on 0..K-1 (full-space ids), 255 stays 255.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"label_mode {mode!r} is not one of {LABEL_MODES}.")
    unseen_set = {int(u) for u in unseen}
    if any(not 0 <= u < num_classes for u in unseen_set):
        raise ValueError(f"unseen {sorted(unseen_set)} must lie in 0..{num_classes - 1}.")
    if mode == "transductive" and not unseen_set:
        raise ValueError("label_mode='transductive' needs the unseen class indices.")
    lut = np.full(256, IGNORE, np.uint8)
    if mode == "inductive":
        seen = [k for k in range(num_classes) if k not in unseen_set]
        lut[seen] = np.arange(len(seen))
    else:
        lut[:num_classes] = np.arange(num_classes)
    return lut


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmseg's aspect-keeping size: the largest with long side <= max(scale), short <= min."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def random_rescale_size(
    height: int,
    width: int,
    rng: np.random.Generator,
    base_scale: tuple[int, int],
    ratio_range: tuple[float, float],
) -> tuple[int, int]:
    """Samples a ratio in `ratio_range` of `base_scale` and returns the aspect-kept size."""
    ratio = rng.uniform(*ratio_range)
    scale = (int(base_scale[0] * ratio), int(base_scale[1] * ratio))
    return rescale_size(height, width, scale)


def resize(array: np.ndarray, size: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """Resizes `[H, W(, C)]` to `size` (h, w): bilinear for images, nearest for labels."""
    if array.shape[:2] == tuple(size):
        return array
    interpolation = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


def resize_crop(image: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """`resize(image, size)[y0:y0 + h, x0:x0 + w]` (bilinear) without resizing the rest.

    One affine warp with cv2.resize's pixel-centre mapping, src = (dst + 0.5) * in/out - 0.5.
    """
    y0, x0, h, w = box
    sy, sx = image.shape[0] / size[0], image.shape[1] / size[1]
    matrix = np.array([[sx, 0.0, (x0 + 0.5) * sx - 0.5], [0.0, sy, (y0 + 0.5) * sy - 0.5]])
    return cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def random_crop_box(
    label: np.ndarray,
    crop: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 0.75,
    retries: int = 10,
) -> tuple[int, int, int, int]:
    """Picks a crop (y0, x0, h, w); retries while one class covers >= cat_max_ratio of it.

    As in mmseg: up to `retries` further boxes are drawn until the crop holds at least two
    classes (ignore excluded) and the largest covers less than `cat_max_ratio`; the last box drawn
    is used.
    """
    height, width = label.shape
    ch, cw = min(crop[0], height), min(crop[1], width)

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))

    y0, x0 = draw()
    if cat_max_ratio < 1.0:
        for _ in range(retries):
            counts = np.bincount(label[y0 : y0 + ch, x0 : x0 + cw].ravel(), minlength=256)[:IGNORE]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, x0 = draw()
    return y0, x0, ch, cw


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg's PhotoMetricDistortion on uint8 RGB `[H, W, 3]`, each step with prob 0.5.

    Brightness (+U(-32, 32)), then contrast (xU(0.5, 1.5)) either first or last, saturation
    (S x U(0.5, 1.5)) and hue (H + randint(-18, 18) of 180) in OpenCV's uint8 HSV; every step clips
    to 0..255 and truncates to uint8 (applied as lookup tables).
    """

    def affine_lut(alpha: float, beta: float) -> np.ndarray:
        return np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return cv2.LUT(img, affine_lut(rng.uniform(*contrast_range), 0.0))
        return img

    if rng.integers(2):
        image = cv2.LUT(image, affine_lut(1.0, rng.uniform(-brightness_delta, brightness_delta)))
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        image = contrast(image)
    do_saturation = bool(rng.integers(2))
    alpha = rng.uniform(*saturation_range) if do_saturation else 1.0
    do_hue = bool(rng.integers(2))
    shift = int(rng.integers(-hue_delta, hue_delta)) if do_hue else 0
    if do_saturation or do_hue:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        if do_saturation:
            hsv[..., 1] = cv2.LUT(hsv[..., 1], affine_lut(alpha, 0.0))
        if do_hue:
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first:
        image = contrast(image)
    return image


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 RGB `[..., 3]` -> float32 `(x - CLIP_MEAN) / CLIP_STD`."""
    out = image.astype(np.float32)
    out -= CLIP_MEAN
    out *= _INV_STD
    return out


def pad_to(array: np.ndarray, size: tuple[int, int], value: float | np.ndarray) -> np.ndarray:
    """Pads `[h, w(, C)]` at the bottom/right to `size` with `value`."""
    height, width = array.shape[:2]
    if (height, width) == tuple(size):
        return array
    out = np.empty((*size, *array.shape[2:]), array.dtype)
    out[...] = value
    out[:height, :width] = array
    return out


def pad_value(normalized: bool) -> np.ndarray:
    """Image padding: 0 after normalisation (mmseg), else the mean colour (normalises to ~0)."""
    return np.zeros(3, np.float32) if normalized else np.round(CLIP_MEAN).astype(np.uint8)
