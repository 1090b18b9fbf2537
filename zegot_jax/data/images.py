"""Reading images as a viewer shows them: paths, PIL images and arrays to uint8 RGB `[H, W, 3]`."""

import os
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import PIL.ImageOps

ImageLike = str | os.PathLike | np.ndarray | PIL.Image.Image


def _rgb(img: PIL.Image.Image) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` as a viewer shows the image.

    EXIF orientation applied, 16-bit grey scaled (not clipped) to 0..255, float grey (TIFF) in
    [0, 1] scaled by 255 (in [0, 255] taken as is).

    Raises:
        ValueError: a float image with values outside [0, 255] or not finite.
    """
    img = PIL.ImageOps.exif_transpose(img)
    if img.mode == "F":
        grey = np.asarray(img, np.float64)
        finite = np.isfinite(grey)
        low, high = (float(grey[finite].min()), float(grey[finite].max())) if finite.any() else (0.0, 0.0)
        if not (finite.all() and low >= 0 and high <= 255):
            nan = "" if finite.all() else " and NaN/Inf"
            raise ValueError(
                f"float values in [{low:.4g}, {high:.4g}]{nan}, neither [0, 1] nor "
                "[0, 255]; save it as an 8-bit image"
            )
        grey = grey * 255.0 if high <= 1.0 else grey
        return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=-1)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(img).astype(np.float64)
        grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"))


def load_image(image: ImageLike) -> np.ndarray:
    """Reads a path, PIL image or array as uint8 RGB `[H, W, 3]`.

    Files and PIL images are read as a viewer shows them (EXIF orientation applied, 16-bit grey
    scaled to 8 bits). Grey `[H, W]` / `[H, W, 1]` arrays are repeated to three channels; an alpha
    channel is dropped.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a readable image, or an array of the wrong shape.
        TypeError: an array that is not uint8, or an unsupported type.
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if path.is_dir():
            raise FileNotFoundError(
                f"{str(path)!r} is a directory, not an image file: pass the images in it (e.g. dir/*.jpg)."
            )
        if not path.is_file():
            raise FileNotFoundError(f"Image file {str(path)!r} does not exist.")
        try:
            with PIL.Image.open(path) as img:
                return _rgb(img)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise ValueError(f"Cannot read {str(path)!r} as an image ({e}).") from e
    if isinstance(image, PIL.Image.Image):
        return _rgb(image)
    if not isinstance(image, np.ndarray | jax.Array):
        raise TypeError(
            f"Expected a path, a PIL image or a uint8 array [H, W, 3]; got {type(image).__name__}."
        )
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(
            f"Image arrays must be uint8 [H, W, 3] (0..255); got dtype {array.dtype}. "
            "Convert floats in [0, 1] with (x * 255).round().astype(np.uint8)."
        )
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(
            f"Image arrays must be [H, W, 3] (or grey [H, W], or RGBA); got shape {array.shape}."
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])
