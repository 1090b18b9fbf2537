"""Evaluation cost per image on the synthetic world: the per-image loop against batched evaluation.

  python benchmarks/evaluation.py                      # 400 and 2,400 held-out images
  python benchmarks/evaluation.py --images 100 300     # quicker

The synthetic config's model with its small CLIP at random weights (the same shapes as the
pretrained one, so the same cost; no pretraining needed). For each way of evaluating it times one
pass over N and over N' images and reports the cost per extra image, `(t(N') - t(N)) / (N' - N)`,
which cancels compilation and set-up (as `evaluate.py` over 400 and 2,400 images did). The
per-image loop is the evaluator before batching: `make_predictor` on one image at a time on the
default device, its confusion matrix added per image. Prints Markdown; asserts nothing.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import synthetic  # noqa: E402
from zegot_jax.evaluation import evaluator, metrics  # noqa: E402
from zegot_jax.synthetic import pretrain  # noqa: E402
from zegot_jax.train import inputs  # noqa: E402
from zegot_jax.train import state as state_lib  # noqa: E402


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
    data = inputs.DataSetup.from_config(config)
    start = time.perf_counter()
    fn(config, parts, data.eval_iterator(), data.class_names, data.unseen, 0.1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs=2, default=(400, 2400))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="eval.batch_size of the batched rows (default: the config's)")
    args = parser.parse_args()
    config = synthetic.get_config()
    if args.batch_size:
        config.eval.batch_size = args.batch_size
    clip = pretrain.init_clip(config.synthetic.pretrain)
    parts = tuple(state_lib.split_model(state_lib.build_model(config, clip)))
    small, large = args.images
    print(f"CPU: {platform.processor() or platform.machine()}, devices: {jax.device_count()} "
          f"({jax.devices()[0].platform}), load average at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"synthetic config, {config.synthetic.image_size}px images, "
          f"eval.batch_size={config.eval.batch_size}\n")
    print(f"| evaluation | {small} images (s) | {large} images (s) | ms per extra image |")
    print("|---|---|---|---|")
    rows = {}
    for name, fn in (("per image (before)", per_image), ("batched", batched)):
        timed(fn, config, parts, 8)  # compile
        t_small, t_large = timed(fn, config, parts, small), timed(fn, config, parts, large)
        rows[name] = 1e3 * (t_large - t_small) / (large - small)
        print(f"| {name} | {t_small:.2f} | {t_large:.2f} | {rows[name]:.2f} |", flush=True)
    print(f"\nper image / batched: {rows['per image (before)'] / rows['batched']:.1f}x; "
          f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
