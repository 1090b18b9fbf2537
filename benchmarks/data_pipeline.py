"""Training-pipeline throughput: JPEG decode + mmseg augmentation + 512 crops, via TFDS + grain.

    python benchmarks/data_pipeline.py [--workers=0,1,2] [--num_images=96] [--batches=12]

Builds a small COCO-Stuff-shaped dataset (640x480 JPEGs of smooth synthetic scenes, grey PNG
labels) with the real builder, reads it with `tfds.data_source` and times `train_iterator` (crop
512, batch 8, photometric distortion on). Reports wall-clock images/s and CPU seconds per image
(this process plus its grain workers), whose inverse is images/s per fully used core: that number
does not depend on how busy a shared machine is. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import psutil

from zegot_jax.data import pipeline, prepare


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image (gradients, blobs, mild noise: natural-like JPEG size) and its label."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], -1) * 255
    label = np.full((height, width), 118, np.uint8)  # a stuff class
    for cls in rng.choice([0, 2, 5, 14, 19, 23, 60, 95, 100, 150], size=6, replace=False):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(30, 160)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image[mask] = rng.uniform(0, 255, 3)
        label[mask] = cls
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_dataset(root: Path, num_images: int, size: tuple[int, int]) -> str:
    rng = np.random.default_rng(0)
    raw = root / "raw"
    for folder, count in (("train2017", num_images), ("val2017", 1)):
        (raw / "images" / folder).mkdir(parents=True)
        (raw / "annotations" / folder).mkdir(parents=True)
        for i in range(count):
            image, label = _scene(rng, *size)
            PIL.Image.fromarray(image).save(raw / "images" / folder / f"{i:012d}.jpg", quality=90)
            PIL.Image.fromarray(label).save(raw / "annotations" / folder / f"{i:012d}.png")
    prepare.prepare("coco_stuff", raw, root / "tfds", allow_partial=True)
    return str(root / "tfds")


def _cpu_seconds(process: psutil.Process) -> float:
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def measure(source, workers: int, normalize: bool, batches: int, batch_size: int) -> dict:
    it = pipeline.train_iterator(
        source,
        batch_size=batch_size,
        crop_size=512,
        seed=0,
        num_classes=171,
        unseen=(19, 23),
        normalize=normalize,
        num_workers=workers,
        shard_options=pipeline.grain.NoSharding(),
    )
    for _ in range(2):  # warm-up: worker start, first decodes
        next(it)
    me = psutil.Process()
    cpu0, t0 = _cpu_seconds(me), time.perf_counter()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(me) - cpu0
    images = batches * batch_size
    del it
    return {"wall": images / wall, "cpu_per_image": cpu / images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--num_images", type=int, default=96)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_dataset(Path(tmp), args.num_images, (480, 640))
        source = pipeline.tfds_source("coco_stuff", "train", data_dir)
        size = np.mean([len(source[i]["image"]) for i in range(len(source))]) / 1024
        print(
            f"{psutil.cpu_count()} CPUs; {len(source)} JPEGs 640x480 (mean {size:.0f} KiB), "
            f"crop 512, batch {args.batch_size}, load average {psutil.getloadavg()[0]:.1f}\n"
        )
        print("| workers | image dtype | images/s (wall) | CPU ms / image | images/s per core |")
        print("|---|---|---|---|---|")
        for workers in [int(w) for w in args.workers.split(",")]:
            for normalize in (True, False):
                r = measure(source, workers, normalize, args.batches, args.batch_size)
                dtype = "float32 (normalised)" if normalize else "uint8"
                print(
                    f"| {workers} | {dtype} | {r['wall']:.1f} | "
                    f"{1000 * r['cpu_per_image']:.1f} | {1 / r['cpu_per_image']:.1f} |"
                )


if __name__ == "__main__":
    main()
