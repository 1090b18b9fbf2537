"""The interactive segmentation page: `zegot-jax demo --run RUN`, or inline in a notebook.

    from zegot_jax import demo
    from zegot_jax.inference import Segmenter
    demo.launch(Segmenter.from_run("runs/synthetic"))   # the page in the cell's output (Colab too)

An image (uploaded, or one of the synthetic world's test images), a vocabulary and a seen penalty
in; the overlay with its legend, the label map to download (the palette PNG of `zegot-jax
segment`), per-class scores and one class's per-prompt maps and plans of each layer out. Requests
run one at a time on the one model; bad input shows one line and the page goes on serving. Gradio
is the optional `demo` extra (`pip install 'zegot-jax[demo]'`), imported when a page is built.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image

from zegot_jax import errors, viz
from zegot_jax.inference import SegmentationResult, Segmenter, load_image

if TYPE_CHECKING:  # gradio is optional: imported by `require_gradio()` when a page is built
    import gradio as gr

INSTALL = "pip install 'zegot-jax[demo]'"
NUM_EXAMPLES = 3
EXAMPLE_SIZE = 192  # the synthetic world renders at any size; its test images are 64 px in training
SCORE_HEADERS = ["class", "mean", "max", "pixel share"]


def require_gradio() -> Any:
    """The gradio module; MissingDependency (naming the extra to install) without it."""
    try:
        import gradio  # noqa: PLC0415 (optional: the base package works without it)
    except ImportError as e:
        raise errors.MissingDependency(f"The demo page needs Gradio: {INSTALL}") from e
    if not hasattr(gradio, "Blocks"):  # e.g. Gradio's cache folder /tmp/gradio, run from /tmp
        where = ", ".join(getattr(gradio, "__path__", None) or [str(gradio.__file__)])
        raise errors.MissingDependency(
            f"The demo page needs Gradio: {INSTALL} ('import gradio' finds {where}, which is not the package)"
        )
    return gradio


def parse_vocabulary(text: str) -> list[str]:
    """'cat, dog,grass' -> ['cat', 'dog', 'grass'].

    Raises:
        ValueError: no names, or an empty name (two commas in a row, a trailing comma). Repeated
            names and too many are refused by `Segmenter.segment`.
    """
    names = [n.strip() for n in (text or "").split(",")]
    if all(not n for n in names):
        raise ValueError("The vocabulary is empty: type comma-separated class names, e.g. 'cat, dog, grass'.")
    if any(not n for n in names):
        raise ValueError(
            f"The vocabulary {text.strip()!r} has an empty name (two commas in a row or a trailing comma)."
        )
    return names


def with_seen_penalty(segmenter: Segmenter, penalty: float) -> Segmenter:
    """The same model scoring with `eval.seen_penalty = penalty`; `segmenter` is left as it is.

    A shallow copy with its own config: parameters, compiled functions and the text cache are
    shared (the penalty is an argument of the compiled function, so no value compiles anew).
    """
    view = copy.copy(segmenter)
    view.config = copy.deepcopy(segmenter.config)
    view.config.eval.seen_penalty = float(penalty)
    return view


def seen_classes(segmenter: Segmenter) -> tuple[str, ...]:
    """The run's classes that the seen penalty lowers (those labelled in an inductive training)."""
    return with_seen_penalty(segmenter, 1.0).seen_class_names  # empty while the penalty is 0


def classes_note(segmenter: Segmenter) -> str:
    """Markdown naming the run's classes, seen and unseen."""
    seen = {n.lower() for n in seen_classes(segmenter)}
    names = segmenter.run_class_names
    if not seen:
        return (
            f"The run's classes ({len(names)}; none is penalised: the run did not train "
            f"inductively): {', '.join(names)}."
        )
    unseen = [n for n in names if n.lower() not in seen]
    return (
        f"The run's classes: **seen** in training (the seen penalty lowers their scores): "
        f"{', '.join(n for n in names if n.lower() in seen)}; **unseen**: "
        f"{', '.join(unseen) or 'none'}. Any other name works too (at most "
        f"{segmenter.config.model.max_classes})."
    )


def write_examples(directory: Path, count: int = NUM_EXAMPLES) -> list[str]:
    """Renders the first `count` test images of the synthetic world (seed 0) as PNGs."""
    from zegot_jax.synthetic import world  # noqa: PLC0415 (only the page's examples need it)

    paths = []
    for i in range(count):
        path = directory / f"synthetic-test-{i}.png"
        PIL.Image.fromarray(world.render(0, "test", i, size=EXAMPLE_SIZE)["image"]).save(path)
        paths.append(str(path))
    return paths


def score_table(result: SegmentationResult) -> list[list[Any]]:
    """Rows of class, mean score, max score and pixel share (of the label map)."""
    counts = np.bincount(result.label_map.ravel(), minlength=len(result.class_names))
    share = counts / max(int(counts.sum()), 1)
    return [
        [
            name,
            round(float(result.score_mean[i]), 4),
            round(float(result.score_max[i]), 4),
            round(float(share[i]), 4),
        ]
        for i, name in enumerate(result.class_names)
    ]


def largest_class(result: SegmentationResult) -> str:
    """The class covering the most pixels."""
    counts = np.bincount(result.label_map.ravel(), minlength=len(result.class_names))
    return result.class_names[int(np.argmax(counts))]


def save_prompt_maps(result: SegmentationResult, name: str, path: Path) -> None:
    """`viz.prompt_grid` of one class for each layer, stacked top to bottom into one PNG."""
    pictures = []
    for layer in range(len(result.layers)):
        fig = viz.prompt_grid(result, [name], layer=layer)
        fig.canvas.draw()
        pictures.append(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    width = max(p.shape[1] for p in pictures)
    pad = lambda p: np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255)
    PIL.Image.fromarray(np.concatenate([pad(p) for p in pictures])).save(path)


def segment_request(
    segmenter: Segmenter,
    image_path: str | None,
    vocabulary: str,
    penalty: float,
    out: Path,
    name: str = "image",
) -> dict[str, Any]:
    """One press of the page's button: segments and writes the pictures and the label map.

    Args:
        segmenter: the model.
        image_path: the uploaded (or example) image file; None when none was given.
        vocabulary: comma-separated class names.
        penalty: the seen penalty (0 scores every class alike).
        out: an empty directory for this request's files.
        name: the image's file name as the user knows it (messages and the download's name).

    Raises:
        ValueError, TypeError: bad input, with the message to show.

    Returns:
        result, overlay, labels, prompts (paths), table, grid_class, status.
    """
    start = time.perf_counter()
    if image_path is None:
        raise ValueError("Upload an image or pick an example first.")
    names = parse_vocabulary(vocabulary)
    try:
        pixels = load_image(image_path)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise ValueError(str(e).replace(repr(str(image_path)), repr(name))) from None
    result = with_seen_penalty(segmenter, penalty).segment(
        pixels, names, details=True, full_scores=False
    )  # the same label map, less memory
    seconds = time.perf_counter() - start
    stem = Path(name).stem or "image"
    files = {key: out / f"{stem}_{key}.png" for key in ("overlay", "labels", "prompts")}
    viz.save(viz.overlay_figure(result, title=name), files["overlay"])
    viz.save_label_map(result.label_map, len(result.class_names), files["labels"])
    grid_class = largest_class(result)
    save_prompt_maps(result, grid_class, files["prompts"])
    height, width = result.label_map.shape
    status = (
        f"{name}: {width}x{height} pixels, {len(names)} classes, segmented in {seconds:.2f} s "
        f"({time.perf_counter() - start:.2f} s with the pictures)."
    )
    return {
        "result": result,
        **{k: str(v) for k, v in files.items()},
        "table": score_table(result),
        "grid_class": grid_class,
        "status": status,
    }


def _shown(e: BaseException) -> str | None:
    """The one-line message for a failure the user can fix (None: a bug, re-raised)."""
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "RESOURCE_EXHAUSTED" in str(e)):
        return "Out of memory for this image and vocabulary: try a smaller image or fewer classes."
    if isinstance(e, errors.USER_ERRORS):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def _payload_path(payload: Any) -> tuple[str | None, str]:
    """(server path, the user's file name) of an image component's unprocessed value."""
    if payload is None:
        return None, "image"
    data = payload if isinstance(payload, dict) else payload.model_dump()
    return data.get("path"), data.get("orig_name") or Path(data.get("path") or "image").name


class _Files:
    """The page's folder: the examples, and one folder per request for its pictures.

    Starting a request removes the previous requests' folders: Gradio has copied their files into
    its own cache by then, as requests run one at a time.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="zegot-demo-"))
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        (self.root / "examples").mkdir()
        self.examples = write_examples(self.root / "examples")
        self._count = itertools.count()

    def fresh(self) -> Path:
        """An empty folder for one request."""
        for old in self.root.glob("request-*"):
            shutil.rmtree(old, ignore_errors=True)
        path = self.root / f"request-{next(self._count)}"
        path.mkdir()
        return path


def _handlers(gr: Any, segmenter: Segmenter, files: _Files) -> tuple[Callable, Callable]:
    """The functions behind the button and the class menu."""

    def on_segment(payload, vocabulary, penalty):
        image_path, name = _payload_path(payload)
        try:
            page = segment_request(segmenter, image_path, vocabulary, penalty, files.fresh(), name)
        except Exception as e:  # noqa: BLE001 (user errors become the page's message)
            if (message := _shown(e)) is None:
                raise
            raise gr.Error(message, print_exception=False) from None
        result = page["result"]
        kept = result._replace(image=None, label_map=None)  # what the class menu redraws from
        return (
            page["overlay"],
            page["labels"],
            page["table"],
            gr.Dropdown(choices=list(result.class_names), value=page["grid_class"]),
            page["prompts"],
            page["status"],
            kept,
        )

    def on_grid_class(name, result):
        if result is None or name not in result.class_names:
            return gr.skip()
        path = files.fresh() / f"prompts-{name}.png"
        save_prompt_maps(result, name, path)
        return str(path)

    return on_segment, on_grid_class


def build(segmenter: Segmenter) -> gr.Blocks:
    """The page (a `gr.Blocks`, queued: one request at a time) for a loaded segmenter."""
    gr = require_gradio()
    files = _Files()
    on_segment, on_grid_class = _handlers(gr, segmenter, files)
    with gr.Blocks(
        title="zegot_jax: zero-shot segmentation", analytics_enabled=False, delete_cache=(3600, 86400)
    ) as page:
        gr.Markdown("## zegot_jax: segment an image with any vocabulary")
        gr.Markdown(classes_note(segmenter))
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="image", type="filepath", format="png", elem_id="image")
                gr.Examples(
                    examples=[[p] for p in files.examples],
                    inputs=[image],
                    label="synthetic world test images",
                )
                vocabulary = gr.Textbox(
                    label="vocabulary (comma-separated)",
                    lines=3,
                    value=", ".join(segmenter.run_class_names),
                    elem_id="vocabulary",
                )
                penalty = gr.Slider(
                    0.0,
                    1.0,
                    value=float(segmenter.config.eval.seen_penalty),
                    step=0.01,
                    elem_id="penalty",
                    label="seen penalty (subtracted from the seen classes' scores)",
                    interactive=bool(seen_classes(segmenter)),
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column(scale=2):
                overlay = gr.Image(label="overlay", format="png", interactive=False, elem_id="overlay")
                status = gr.Markdown(elem_id="status")
                labels = gr.File(label="label map (palette PNG of class indices)", elem_id="labels")
                table = gr.Dataframe(
                    headers=SCORE_HEADERS, label="per-class scores", interactive=False, elem_id="scores"
                )
        grid_class = gr.Dropdown(label="class for the per-prompt maps", choices=[], elem_id="grid-class")
        prompts = gr.Image(
            label="per-prompt similarity maps and transport plans, each layer",
            format="png",
            interactive=False,
            elem_id="prompts",
        )
        button.click(
            on_segment,
            [image, vocabulary, penalty],
            [overlay, labels, table, grid_class, prompts, status, state],
            preprocess=False,  # the image is read here, to word a bad file's message
            concurrency_id="model",
        )
        grid_class.input(on_grid_class, [grid_class, state], [prompts], concurrency_id="model")
    return page.queue(default_concurrency_limit=1)


def launch(segmenter: Segmenter, **kwargs: Any) -> gr.Blocks:
    """Shows the page inline in a notebook (Colab included) and returns it.

    Args:
        segmenter: the loaded model, e.g. `Segmenter.from_run("runs/synthetic")`.
        **kwargs: passed to `gr.Blocks.launch` (e.g. `share=True`, `server_port=7861`).
    """
    page = build(segmenter)
    page.launch(**{"prevent_thread_lock": True, **kwargs})
    return page


def serve(segmenter: Segmenter, *, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serves the page at http://host:port until interrupted (Ctrl-C).

    Raises:
        OSError: the port is taken or the host is not this machine's (naming the flags).
    """
    page = build(segmenter)
    try:
        page.launch(server_name=host, server_port=port, inline=False, quiet=True, prevent_thread_lock=True)
    except OSError as e:
        raise OSError(
            f"Cannot serve on {host}:{port}: the port is taken or the address is not "
            "this machine's; pick another --port or --host."
        ) from e
    print(f"Serving the page on {page.local_url} (Ctrl-C stops).", file=sys.stderr, flush=True)
    page.block_thread()
