"""Pretrains the synthetic CLIP and prints its speed, retrieval and dense zero-shot quality.

    python benchmarks/synthetic_pretrain.py [--steps N] [--size default|smoke] [--no-cache]

Trains from scratch (the timing is the point), then stores the weights where
`pretrained_clip` looks for them, unless --no-cache or --steps changes the config.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from zegot_jax.clip.weights import save_safetensors
from zegot_jax.experiments.zero_shot import retrieval_top1, zero_shot_dense_miou
from zegot_jax.synthetic import pretrain as P
from zegot_jax.synthetic import world
from zegot_jax.synthetic.source import SyntheticSource


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="default")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--eval-images", type=int, default=256)
    parser.add_argument("--pooling", default=None, choices=P.POOLINGS)
    args = parser.parse_args()
    config = P.default_pretrain_config(args.size)
    if args.steps is not None:
        config.steps = args.steps
    if args.pooling is not None:
        config.pooling = args.pooling
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}  load: {os.getloadavg()}")
    start = time.perf_counter()
    clip, history = P.pretrain(config)
    total = time.perf_counter() - start
    if not args.no_cache:
        path = P.cache_path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(clip, path)
        print(f"saved {path}")
    held_out = SyntheticSource("test", config.image_size, args.eval_images, config.world_seed)
    rows = [
        ("steps", config.steps),
        ("wall time (s)", f"{total:.1f}"),
        ("steps/s (incl. compile)", f"{config.steps / total:.3f}"),
        (
            "steady steps/s (after step 1)",
            f"{(config.steps - 1) / (history['seconds'][-1] - history['seconds'][0]):.3f}",
        ),
        ("first step (compile) s", f"{history['seconds'][0]:.1f}"),
        ("images/s", f"{config.steps * config.batch_size / total:.1f}"),
        (
            "loss first/last 10",
            f"{sum(history['loss'][:10]) / 10:.3f} / {sum(history['loss'][-10:]) / 10:.3f}",
        ),
        ("temperature", f"{1 / 2.718281828 ** history['logit_scale'][-1]:.4f}"),
    ]
    embed = lambda m, x: P.image_embedding(m, x, config.pooling)
    r = retrieval_top1(clip, held_out, num_images=args.eval_images, embed=embed)
    rows += [
        (f"retrieval top-1 / {args.eval_images} (chance)", f"{r['top1']:.3f} ({r['chance']:.3f})"),
        ("retrieval same-content top-1 (chance)", f"{r['content_top1']:.3f} ({r['content_chance']:.3f})"),
    ]
    names = [world.CLASS_NAMES[i] for i in world.UNSEEN]
    last = config.model.vision_layers - 1
    probes = [("standard", None), ("value", None)] + [(f"layer {i}", i) for i in range(last)]
    for dense, layer in probes:
        z = zero_shot_dense_miou(
            clip,
            held_out,
            num_images=args.eval_images,
            dense=dense if layer is None else "standard",
            layer=layer,
        )
        rows += [
            (
                f"zero-shot mIoU all, {dense} (chance, ceiling)",
                f"{z['miou']:.3f} ({z['chance_miou']:.3f}, {z['ceiling_miou']:.3f})",
            ),
            (f"zero-shot mIoU seen, {dense}", f"{z['miou_seen']:.3f}"),
            (
                f"zero-shot mIoU unseen {names}, {dense} (chance)",
                f"{z['miou_unseen']:.3f} ({z['chance_miou_unseen']:.3f})",
            ),
            (
                f"per-class IoU, {dense}",
                " ".join(f"{k}={v:.2f}" for k, v in z["per_class_iou"].items() if v is not None),
            ),
        ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure':{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k:{width}} | {v} |")


if __name__ == "__main__":
    main()
