"""Prints the synthetic world's rendering speed and class statistics.

python benchmarks/synthetic_world.py [--images N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zegot_jax.synthetic import world


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    print("| size | images/s (1 thread) |\n|------|---------------------|")
    for size in (32, 64, 96, 128):
        start = time.perf_counter()
        for i in range(args.images):
            world.render(0, "train", i, size)
        print(f"| {size:4d} | {args.images / (time.perf_counter() - start):19.0f} |")
    k = len(world.CLASS_NAMES)
    counts = np.stack(
        [
            np.bincount(world.render(0, "train", i, 64)["label"].ravel(), minlength=k)
            for i in range(args.images)
        ]
    )
    print("\n| class | kind | unseen | images with it | pixel share |\n|---|---|---|---|---|")
    for c, spec in enumerate(world.CLASSES):
        print(
            f"| {spec.name} | {'stuff' if spec.stuff else 'thing'} | "
            f"{'yes' if c in world.UNSEEN else ''} | {(counts[:, c] > 0).mean():.3f} | "
            f"{counts[:, c].sum() / counts.sum():.3f} |"
        )


if __name__ == "__main__":
    main()
