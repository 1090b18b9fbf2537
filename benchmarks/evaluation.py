"""Evaluation cost per image on the synthetic world: the per-image loop against batched evaluation.

  python benchmarks/evaluation.py                      # 400 and 2,400 held-out images
  python benchmarks/evaluation.py --images 100 300     # quicker

The synthetic config's model with its small CLIP at random weights (the same shapes as the
pretrained one, so the same cost; no pretraining needed). For each way of evaluating it times one
pass over N and over N' images and reports the cost per extra image, `(t(N') - t(N)) / (N' - N)`,
which cancels compilation and set-up (as `evaluate.py` over 400 and 2,400 images did). The
per-image loop is the evaluator before batching: `make_predictor` on one image at a time on the
default device, its confusion matrix added per image. Then where a batched image's time goes:
the pipeline alone (rendering + transform), and on one fixed batch already in memory the batched
scorer, the image tower (`pixel_features`) and `segment` (tower + DLFA + MPOT), in ms per image.
Prints Markdown; asserts nothing.
"""

import argparse
import os
import time

import harness
import jax.numpy as jnp
import numpy as np

from configs import synthetic
from zegot_jax.data.setup import DataSetup
from zegot_jax.evaluation import evaluator, metrics
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.models.functional import merge
from zegot_jax.synthetic import pretrain


def per_image(config, parts, examples, names, unseen, seen_penalty):
    """The evaluator as it was: one dispatch per image, counts added on device."""
    g, p, f = parts
    text = evaluator.text_features_of(g, p, f, names, config.clip.text_context_length)
    predict = evaluator.make_predictor(g, config)
    k = len(names)
    penalty = jnp.asarray([0.0 if i in unseen else seen_penalty for i in range(k)])
    conf = jnp.zeros((k, k), jnp.int32)
    for ex in examples:
        label = np.asarray(ex["label"])
        scores = predict(p, f, text, jnp.asarray(ex["image"])[None], label.shape)
        pred = jnp.argmax(scores - penalty[:, None, None], axis=0)
        conf = conf + metrics.confusion_matrix(pred, jnp.asarray(label), k)
    return np.asarray(conf)


def batched(config, parts, examples, names, unseen, seen_penalty):
    g, p, f = parts
    return evaluator.evaluate(config, g, p, f, examples, names, unseen, seen_penalty=seen_penalty)


def timed(fn, config, parts, count):
    config.synthetic.eval_images = count
    data = DataSetup.from_config(config)
    start = time.perf_counter()
    fn(config, parts, data.eval_iterator(), data.class_names, data.unseen, 0.1)
    return time.perf_counter() - start


def breakdown(config, parts) -> list[tuple[str, float]]:
    """ms per image of the pipeline and of the batched scorer's parts on one in-memory batch."""
    g, p, f = parts
    size = int(config.eval.batch_size)
    config.synthetic.eval_images = 20 * size
    data = DataSetup.from_config(config)
    start = time.perf_counter()
    examples = list(data.eval_iterator())
    pipeline = 1e3 * (time.perf_counter() - start) / len(examples)
    images = jnp.asarray(np.stack([ex["image"] for ex in examples[:size]]))
    labels = jnp.asarray(np.stack([ex["label"] for ex in examples[:size]]).astype(np.int32))
    text = evaluator.text_features_of(g, p, f, data.class_names, config.clip.text_context_length)
    cases = {
        "batched scorer on an in-memory batch": harness.Case(
            evaluator.make_batch_scorer(g, config, jnp.zeros(len(data.class_names))),
            lambda: (p, f, text, images, labels),
        ),
        "  image tower (`pixel_features`)": harness.Case(
            lambda p, f, x: merge(g, p, f).pixel_features(x), lambda: (p, f, images)
        ),
        "  `segment` (tower, DLFA, MPOT, score maps)": harness.Case(
            lambda p, f, t, x: merge(g, p, f).segment(x, t).logits, lambda: (p, f, text, images)
        ),
    }
    measured = harness.compare(cases, rounds=10, budget_s=30.0)
    return [
        ("pipeline alone (render + transform, its reader threads)", pipeline),
        *((name, 1e3 * m.run_s / size) for name, m in measured.items()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs=2, default=(400, 2400))
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="eval.batch_size of the batched rows (default: the config's)",
    )
    args = parser.parse_args()
    config = synthetic.get_config()
    if args.batch_size:
        config.eval.batch_size = args.batch_size
    clip = pretrain.init_clip(config.synthetic.pretrain)
    parts = tuple(functional.split_model(build_lib.build_model(config, clip)))
    small, large = args.images
    print(f"{harness.machine_line()} (at the start)")
    print(
        f"synthetic config, {config.synthetic.image_size}px images, "
        f"eval.batch_size={config.eval.batch_size}\n"
    )
    print(f"| evaluation | {small} images (s) | {large} images (s) | ms per extra image |")
    print("|---|---|---|---|")
    rows = {}
    for name, fn in (("per image (before)", per_image), ("batched", batched)):
        timed(fn, config, parts, 8)  # compile
        t_small, t_large = timed(fn, config, parts, small), timed(fn, config, parts, large)
        rows[name] = 1e3 * (t_large - t_small) / (large - small)
        print(f"| {name} | {t_small:.2f} | {t_large:.2f} | {rows[name]:.2f} |", flush=True)
    print(f"\nper image / batched: {rows['per image (before)'] / rows['batched']:.1f}x\n")
    print(f"| where a batched image's time goes (batch {config.eval.batch_size}) | ms per image |")
    print("|---|---|")
    for name, ms in breakdown(config, parts):
        print(f"| {name} | {ms:.2f} |", flush=True)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
