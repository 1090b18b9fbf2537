"""The `zegot-jax` command line.

    zegot-jax segment photo.jpg more/*.png --classes "cat,dog,grass" --run runs/synthetic --out out/
    zegot-jax demo --run runs/synthetic [--port 7860] [--host 127.0.0.1]

For each image it writes `<name>_overlay.png` (image, colour overlay, legend), `<name>_labels.png`
(the label map: palette PNG whose pixel values are class indices, 16-bit grey above 256 classes),
`<name>_prompts.png` (per-prompt similarity maps and transport plans of the largest classes) and
`<name>.json` (classes, pixel shares, mean scores, output files). Without `--classes` the run's own
class list is used. `--plugin` imports a module (or runs a .py file) first, e.g. one that registers
the transport a run was trained with (`zegot_jax.ot.register_transport`). An image that fails is
reported and skipped; the exit status is 1 if any did, 2 when nothing could start (bad
vocabulary, missing run, unregistered transport). ZEGOT_DEBUG=1 shows tracebacks.

`demo` serves the interactive page of `zegot_jax.demo` (the `demo` extra: Gradio) until Ctrl-C;
without Gradio, or with a missing run or a port in use, it prints one line and exits with 2.
"""

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from zegot_jax import demo, errors, inference, storage, strict_json, viz
from zegot_jax.models import prompts as prompts_lib
from zegot_jax.ot.registry import load_plugins


def parse_classes(text: str) -> list[str]:
    """'cat, dog,grass' -> ['cat', 'dog', 'grass'] (validated: non-empty, no duplicates)."""
    names = [n.strip() for n in text.split(",")]
    if all(not n for n in names):
        raise ValueError(
            '--classes is empty: give comma-separated class names, e.g. --classes "cat,dog,grass".'
        )
    if any(not n for n in names):
        raise ValueError(f"--classes {text!r} has an empty name (two commas in a row or a trailing comma).")
    return list(prompts_lib.check_vocabulary(names, max_classes=len(names)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zegot-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="Segment images with a trained run and any vocabulary.")
    seg.add_argument("images", nargs="+", help="Image files (PNG, JPEG, ...).")
    seg.add_argument("--run", required=True, help="A training workdir (its latest checkpoint).")
    seg.add_argument("--out", required=True, help="Output directory (created if needed).")
    seg.add_argument(
        "--classes", default=None, help="Comma-separated vocabulary; default: the run's own class list."
    )
    seg.add_argument(
        "--clip-weights", default=None, help="CLIP weights to use instead of the path the run's config names."
    )
    seg.add_argument(
        "--grid-classes",
        default=None,
        help="Comma-separated classes for the per-prompt grid (default: the 4 largest in each image).",
    )
    seg.add_argument("--alpha", type=float, default=0.5, help="Overlay opacity in [0, 1].")
    seg.add_argument(
        "--no-calibrate",
        action="store_true",
        help="Do not subtract eval.seen_penalty from the run's seen classes.",
    )
    seg.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="A Python module to import (or a .py file to run) before loading the "
        "run, e.g. one that registers the run's transport with "
        "zegot_jax.ot.register_transport. Repeatable.",
    )
    page = sub.add_parser(
        "demo",
        help="Serve the interactive segmentation page (needs the demo extra: pip install 'zegot-jax[demo]').",
    )
    page.add_argument("--run", required=True, help="A training workdir (its latest checkpoint).")
    page.add_argument("--port", type=int, default=7860, help="Port to serve on (default 7860).")
    page.add_argument(
        "--host", default="127.0.0.1", help="Address to serve on (default 127.0.0.1: this machine only)."
    )
    return parser


def _output_stems(images: Sequence[str]) -> list[str]:
    """File stems for the outputs, unique (ignoring case) even against the inputs' own names.

    The first input with a stem keeps it; later ones get `-1`, `-2`, ... skipping any stem another
    input already has, so `a.png img2/a.png a-1.png` gives `a`, `a-2`, `a-1`.
    """
    stems = [Path(image).stem or "image" for image in images]
    taken = {s.lower() for s in stems}
    used, out = set(), []
    for stem in stems:
        name, count = stem, 0
        while name.lower() in used or (count and name.lower() in taken):
            count += 1
            name = f"{stem}-{count}"
        used.add(name.lower())
        out.append(name)
    return out


def summarize(result: inference.SegmentationResult) -> dict:
    """Per-class pixel shares and score statistics of one result (JSON-ready)."""
    k = len(result.class_names)
    counts = np.bincount(result.label_map.ravel(), minlength=k)
    share = counts / max(int(counts.sum()), 1)
    return {
        "size": list(result.label_map.shape),
        "classes": list(result.class_names),
        "present": [result.class_names[i] for i in np.argsort(-counts) if counts[i] > 0],
        "pixel_share": {n: round(float(share[i]), 6) for i, n in enumerate(result.class_names)},
        "mean_score": {n: round(float(result.score_mean[i]), 6) for i, n in enumerate(result.class_names)},
        "max_score": {n: round(float(result.score_max[i]), 6) for i, n in enumerate(result.class_names)},
        **(
            {}
            if result.ot_marginal_error is None
            else {"ot_marginal_error": float(f"{result.ot_marginal_error:.3g}")}
        ),
    }


def segment_one(
    segmenter: inference.Segmenter,
    image: str,
    stem: str,
    out: Any,
    args: argparse.Namespace,
    classes: list[str] | None,
    grid_classes: list[str] | None,
) -> dict:
    """Segments one image and writes its four outputs; returns its JSON summary."""
    start = time.perf_counter()
    result = segmenter.segment(
        image, classes, details=True, calibrate=not args.no_calibrate, full_scores=False
    )  # one class at full resolution at a time
    files = {
        "overlay": f"{stem}_overlay.png",
        "labels": f"{stem}_labels.png",
        "prompts": f"{stem}_prompts.png",
    }
    viz.save(viz.overlay_figure(result, alpha=args.alpha, title=Path(image).name), out / files["overlay"])
    viz.save_label_map(result.label_map, len(result.class_names), out / files["labels"])
    viz.save(viz.prompt_grid(result, grid_classes), out / files["prompts"])
    summary = {
        "image": str(image),
        **summarize(result),
        "outputs": files,
        "seconds": round(time.perf_counter() - start, 3),
    }
    storage.write_text(out / f"{stem}.json", strict_json.dumps(summary, indent=2), root=args.out)
    return summary


def segment_command(args: argparse.Namespace) -> int:
    """Runs `zegot-jax segment`; returns the exit status."""
    try:
        classes = parse_classes(args.classes) if args.classes is not None else None
        grid = parse_classes(args.grid_classes) if args.grid_classes else None
        if not 0.0 <= args.alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}.")
        args.out, args.run = storage.normalise(args.out), storage.normalise(args.run)
        storage.check_writable(args.out, "--out")
        load_plugins(args.plugin)
        inference.check_run(args.run)
        segmenter = inference.Segmenter.from_run(args.run, clip_weights=args.clip_weights)
        if classes is None:
            classes = list(segmenter.run_class_names)
        prompts_lib.check_vocabulary(classes, segmenter.config.model.max_classes)
        segmenter.text_features(classes)  # a name too long for the text tower fails here, once
        if grid and (missing := set(grid) - set(classes)):
            raise ValueError(f"--grid-classes {sorted(missing)} are not in the vocabulary.")
    except errors.USER_ERRORS as e:
        if os.environ.get("ZEGOT_DEBUG"):
            raise
        print(f"zegot-jax segment: error: {e}", file=sys.stderr)
        return 2
    out = storage.path(args.out)
    failures = []
    stems = _output_stems(args.images)
    for image, stem in tqdm(
        list(zip(args.images, stems, strict=True)), desc="segment", unit="img", file=sys.stderr
    ):
        try:
            segment_one(segmenter, image, stem, out, args, classes, grid)
        except (
            ValueError,
            FileNotFoundError,
            TypeError,
            OSError,
            MemoryError,
            RuntimeError,
        ) as e:  # one image failed: report it and go on to the next
            if isinstance(e, RuntimeError) and "RESOURCE_EXHAUSTED" not in str(e):
                raise  # not XLA's out-of-memory: a bug
            reason = str(e) or "out of memory"  # a bare MemoryError says nothing
            failures.append((image, f"{type(e).__name__}: {reason}"))
            tqdm.write(f"failed: {image}: {reason}", file=sys.stderr)
    done = len(args.images) - len(failures)
    print(
        f"Segmented {done} of {len(args.images)} images into {out} ({len(classes)} classes).", file=sys.stderr
    )
    for image, reason in failures:
        print(f"  FAILED {image}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def demo_command(args: argparse.Namespace) -> int:
    """Runs `zegot-jax demo`: serves the page until interrupted; returns the exit status."""
    try:
        demo.require_gradio()  # before the run is loaded
        inference.check_run(args.run)
        segmenter = inference.Segmenter.from_run(args.run)
        # A service manager's stop closes the server and cleans up as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        demo.serve(segmenter, host=args.host, port=args.port)
    except (*errors.USER_ERRORS, OSError) as e:
        if os.environ.get("ZEGOT_DEBUG"):
            raise
        print(f"zegot-jax demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `zegot-jax` console script."""
    args = _parser().parse_args(argv)
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    commands = {"segment": segment_command, "demo": demo_command}
    return commands[args.command](args)


if __name__ == "__main__":  # `python -m zegot_jax.cli segment ...`, e.g. in a notebook cell
    sys.exit(main())
