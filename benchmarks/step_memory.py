"""Compiled memory of each part of a train step: which components hold the memory.

ViT-B/16 at 512x512, global batch 16 on one device, COCO-Stuff's 156 seen classes (171 for the
segment path, evaluation's vocabulary), N=4, layers 5/7/11, the default MPOT (10 Newton steps,
implicit backward): the default config around random weights. Every part is compiled
(`jax.jit(f).lower(...).compile()`) and never run, so this works on a CPU; the figures are
XLA's `memory_analysis()` of each program (temp, argument and output buffers). Parts:

- image tower forward (frozen, no gradient): `pixel_features`;
- text tower forward+backward: gradient of the text features with respect to the prompt contexts;
- MPOT forward+backward: log-domain Sinkhorn unrolled (the old default), and the config's
  `model.ot` (default: Newton with the implicit backward);
- loss forward+backward: upsampling to the label size, focal + dice (`make_upsampled_loss`,
  one image at a time by default);
- the whole train step (`make_train_step`, AdamW, state donated);
- segment path at K=171: `segment` + upsampling (text features given), and MPOT forward alone.

    .venv/bin/python benchmarks/step_memory.py                    # full size, about 5 min on 2 cores
    .venv/bin/python benchmarks/step_memory.py --set model.ot.backward=unrolled --set model.ot.solver=sinkhorn
    .venv/bin/python benchmarks/step_memory.py --smoke            # ':smoke' size, seconds (tests)

`--set KEY=VALUE` (repeatable) overrides any config field (`zegot_jax.configs.overrides`; unknown
fields fail), so new fields such as `model.text_remat` can be compared without changing this script.
Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import harness
import jax
import jax.numpy as jnp
from harness import Setup, make_config

from zegot_jax import tables
from zegot_jax.configs.overrides import override
from zegot_jax.models import functional, losses
from zegot_jax.models.zegot import transport

SMOKE = {"variant": "tiny", "size": 32, "classes": 3, "segment_classes": 5}  # + apply_smoke


def _abstract(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _ot_label(ot_config) -> str:
    steps = ot_config.newton_steps if ot_config.solver == "newton" else ot_config.num_iterations
    return f"{ot_config.solver} {steps}, {ot_config.backward}"


def training_parts(setup: Setup, batch: int, size: int) -> dict[str, tuple[int | str, harness.Case]]:
    """name -> (K, case) for the parts of one train step at the setup's K (seen classes)."""
    graphdef, params, frozen, config = setup.graphdef, setup.params, setup.frozen, setup.config
    model, k = setup.model, len(setup.names)
    spec = model.clip.spec
    layers, pixels = len(model.layers), (size // spec.patch_size) ** 2
    images = _abstract((batch, size, size, 3))
    labels = _abstract((batch, size, size), jnp.int32)
    sim = _abstract((layers, batch, k, pixels, model.num_prompts))
    text_inputs = setup.text_inputs(config.clip.text_context_length)
    weights = _abstract((k, model.num_prompts, spec.embed_dim))
    loss_of = losses.make_upsampled_loss(config.loss)

    def image_fn(f, p, x):
        return functional.merge(graphdef, p, f).pixel_features(x)

    def text_fn(p, f, ti, w):
        return jax.grad(lambda p: jnp.sum(functional.merge(graphdef, p, f).text_features(ti) * w))(p)

    def mpot_fn(ot_config):
        return lambda s: jax.grad(lambda s: jnp.sum(transport(s, ot_config).score))(s)

    def loss_fn(logits, y):
        return jax.grad(lambda x: loss_of(x, y, jax.random.key(0))[0])(logits)

    unrolled = override(
        config, {"model.ot.solver": "sinkhorn", "model.ot.domain": "log", "model.ot.backward": "unrolled"}
    ).model.ot
    implicit = config.model.ot
    logits = _abstract((batch, k, size // spec.patch_size, size // spec.patch_size))
    parts = {
        "image tower forward (frozen, no grad)": (
            "",
            harness.Case(image_fn, lambda: (frozen, params, images)),
        ),
        "text tower forward+backward": (
            k,
            harness.Case(text_fn, lambda: (params, frozen, text_inputs, weights)),
        ),
        f"MPOT forward+backward ({_ot_label(unrolled)})": (
            k,
            harness.Case(mpot_fn(unrolled), lambda: (sim,)),
        ),
        f"MPOT forward+backward ({_ot_label(implicit)})": (
            k,
            harness.Case(mpot_fn(implicit), lambda: (sim,)),
        ),
        "loss forward+backward (upsample, focal + dice)": (
            k,
            harness.Case(loss_fn, lambda: (logits, labels)),
        ),
        f"train step (whole, AdamW; OT {_ot_label(config.model.ot)})": (
            k,
            harness.Case(
                setup.step,
                lambda: (setup.state(), frozen, {"image": images, "label": labels}, text_inputs),
                (0,),
            ),
        ),
    }
    return parts


def segment_parts(setup: Setup, batch: int, size: int, k: int) -> dict[str, tuple[int, harness.Case]]:
    """name -> (K, case) for evaluation's path: text features given (cached per vocabulary)."""
    graphdef, params, frozen, model = setup.graphdef, setup.params, setup.frozen, setup.model
    spec = model.clip.spec
    images = _abstract((batch, size, size, 3))
    text = _abstract((k, model.num_prompts, spec.embed_dim))
    sim = _abstract((len(model.layers), batch, k, (size // spec.patch_size) ** 2, model.num_prompts))

    def segment_fn(f, p, x, t):
        return functional.upsample(functional.merge(graphdef, p, f).segment(x, t).logits, x.shape[1:3])

    return {
        "segment forward (tower + DLFA + MPOT + upsample)": (
            k,
            harness.Case(segment_fn, lambda: (frozen, params, images, text)),
        ),
        f"MPOT forward ({_ot_label(setup.config.model.ot)})": (
            k,
            harness.Case(lambda s: transport(s, setup.config.model.ot).score, lambda: (sim,)),
        ),
    }


def measure(parts: dict[str, tuple]) -> dict[str, tuple[int | str, harness.Measured]]:
    """Compiles each part (not run): name -> (K, measured), printed as they come."""
    measured = {}
    for name, (k, case) in parts.items():
        m = harness.measure(case.fn, case.args_fn, execute=False, donate_argnums=case.donate_argnums)
        measured[name] = (k, m)
        print(f"  {name}: temp {harness.mib(m.temp_bytes)} MiB, compile {m.compile_s:.1f} s", flush=True)
    return measured


def table(measured: dict[str, tuple[int | str, harness.Measured]], step_temp: int) -> str:
    """The Markdown table; 'temp / step temp' = the part's temp / the whole train step's."""
    rows = []
    for name, (k, m) in measured.items():
        share = f"{100 * m.temp_bytes / step_temp:.0f}%" if step_temp > 0 else "n/a"
        rows.append(
            [
                name,
                k,
                f"{m.temp_bytes / 2**20:,.1f}",
                share,
                f"{m.argument_bytes / 2**20:,.1f}",
                f"{m.output_bytes / 2**20:,.1f}",
                f"{m.compile_s:.1f}",
            ]
        )
    return tables.markdown(
        [
            "component",
            "K",
            "temp (MiB)",
            "temp / step temp",
            "arguments (MiB)",
            "outputs (MiB)",
            "compile (s)",
        ],
        rows,
    )


def dominant(measured: dict[str, tuple[int | str, harness.Measured]], step_temp: int, step_ot: str) -> str:
    """One line naming the three parts of the step with the largest temp.

    `step_ot` is the label of the OT setting the step runs; the other MPOT row is not a part.
    """
    parts = sorted(
        (
            (m.temp_bytes, name)
            for name, (_, m) in measured.items()
            if not name.startswith("train step")
            and (not name.startswith("MPOT forward+backward") or step_ot in name)
        ),
        reverse=True,
    )
    return (
        "Largest temp among the step's parts: "
        + "; ".join(
            f"{name} {size / 2**20:,.1f} MiB ({100 * size / step_temp:.0f}% of the step's "
            f"{step_temp / 2**20:,.1f} MiB)"
            for size, name in parts[:3]
        )
        + "."
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random CLIP, seconds (tests)")
    parser.add_argument("--variant", default=None, help="random CLIP variant (default ViT-B/16)")
    parser.add_argument("--size", type=int, default=None, help="crop (default 512; smoke 32)")
    parser.add_argument("--batch", type=int, default=16, help="global batch, one device")
    parser.add_argument("--classes", type=int, default=None, help="seen classes (156; smoke 3)")
    parser.add_argument("--segment-classes", type=int, default=None, help="171; smoke 5")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. model.ot.backward=unrolled",
    )
    args = parser.parse_args(argv)
    full = {"variant": "ViT-B/16", "size": 512, "classes": 156, "segment_classes": 171}
    for key, value in (SMOKE if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build(args: argparse.Namespace) -> Setup:
    """The setup for `args`: default config, random CLIP, ':smoke' size, `--set` overrides."""
    config = make_config(args.variant, "float32")
    config = harness.apply_smoke(config) if args.smoke else config
    return Setup(override(config, harness.parse_overrides(args.set)), args.classes)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.smoke:
        harness.quick_compile()  # temp sizes at that size mean nothing either
    start = time.perf_counter()
    setup = build(args)
    cfg = setup.config
    print(harness.machine_line(), flush=True)
    print(
        f"built random {args.variant} in {setup.build_s:.0f} s; overrides: {' '.join(args.set) or 'none'}",
        flush=True,
    )
    training = measure(training_parts(setup, args.batch, args.size))
    segment = measure(segment_parts(setup, args.batch, args.size, args.segment_classes))
    step_temp = next(m.temp_bytes for name, (_, m) in training.items() if name.startswith("train"))
    print(
        f"\n{harness.machine_line()}\nCompiled memory per component (compiled, not run): random "
        f"{args.variant} at {args.size}x{args.size}, global batch {args.batch} on one device, "
        f"N={cfg.model.num_prompts}, layers {tuple(cfg.model.layers)}, "
        f"OT {_ot_label(cfg.model.ot)}, {cfg.clip.dtype} towers, text "
        f"context {cfg.clip.text_context_length} (trimmed to the longest prompt); overrides: "
        f"{' '.join(args.set) or 'none'}. Total {time.perf_counter() - start:.0f} s.\n"
    )
    print(table({**training, **segment}, step_temp))
    if step_temp > 0:
        print("\n" + dominant(training, step_temp, _ot_label(cfg.model.ot)))


if __name__ == "__main__":
    main()
