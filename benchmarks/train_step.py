"""Train-step throughput and compiled memory: ViT-B/16 at 512x512, COCO-Stuff's 156 seen classes.

The real step (`make_train_step`, AdamW, N=4 prompts, layers 5/7/11, the default MPOT) on
random weights and random labels, in three parts:

1. Memory at the global batch (16): compiled, never run (`lower().compile().memory_analysis()`),
   at the default text context (77) and a short one (16 holds the longest prompt, 14 tokens; with
   the causal mask the features are the same, see `segmenter.py`).
2. Time at a small batch (2 on a CPU, the global batch elsewhere): the step against what it should
   cost at least, the image tower's forward (`pixel_features`) plus the text tower's forward and
   backward (gradient of the text features with respect to the prompt contexts), in the same run.
3. Scaling over 1, 2, 4, 8 simulated CPU devices (`--xla_force_host_platform_device_count`, one
   subprocess each) through the real sharded path (`sharding.make_mesh`, replicated parameters,
   batch from `sharding.to_global`), on a small model. The simulated devices share the host's
   cores: this checks the sharded path's overhead and that it computes the same step, not speed-up.

    .venv/bin/python benchmarks/train_step.py                     # about 6 min on 2 shared cores
    .venv/bin/python benchmarks/train_step.py --size 224 --classes 20 --scaling-devices 1 2
    .venv/bin/python benchmarks/train_step.py --dtype bfloat16     # on a GPU: timed at batch 16

Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import harness
import jax
import jax.numpy as jnp
from harness import Setup, make_config, random_batch

from zegot_jax import sharding, tables
from zegot_jax.models import functional


def _ot_summary(ot) -> str:
    """The default MPOT settings in words, e.g. 'newton 10 steps, implicit backward'."""
    steps = ot.newton_steps if ot.solver == "newton" else ot.num_iterations
    return f"{ot.solver} {steps} {'steps' if ot.solver == 'newton' else 'iterations'}, {ot.backward} backward"


def memory_rows(setup: Setup, args: argparse.Namespace) -> list[list]:
    """Compiles the step at the global batch (abstract batch, not run) per text context."""
    rows = []
    shape = (args.global_batch, args.size, args.size)
    batch = {
        "image": jax.ShapeDtypeStruct((*shape, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct(shape, jnp.int32),
    }
    off = setup.without_ot()
    runs = [(setup, "ott", c) for c in args.contexts] + [(off, "off", min(args.contexts))]
    for s, ot, context in runs:
        ti = s.text_inputs(context)
        m = harness.measure(
            s.step, lambda s=s, ti=ti: (s.state(), s.frozen, batch, ti), execute=False, donate_argnums=(0,)
        )
        rows.append(
            [
                args.global_batch,
                context,
                ot,
                f"{m.compile_s:.0f}",
                f"{m.temp_bytes / 2**30:.1f}",
                f"{m.argument_bytes / 2**30:.2f}",
            ]
        )
        print(f"  {rows[-1]}", flush=True)
    return rows


def time_rows(setup: Setup, args: argparse.Namespace, batch_size: int) -> list[list]:
    """The step, the image tower's forward and the text tower's forward+backward, same run."""
    graphdef, frozen, params = setup.graphdef, setup.frozen, setup.params
    batch = jax.tree.map(jnp.asarray, random_batch(batch_size, args.size, len(setup.names)))

    def image_fn(f, p, x):
        return functional.merge(graphdef, p, f).pixel_features(x)

    rows, off = [], setup.without_ot() if args.ot_off else None
    variants = {
        name: setup.with_overrides(harness.parse_overrides(items)) for name, *items in args.step_variant or []
    }
    weights = jax.random.normal(
        jax.random.key(0), (len(setup.names), setup.model.num_prompts, setup.model.clip.spec.embed_dim)
    )
    for context in args.time_contexts:
        ti = setup.text_inputs(context)

        def text_fn(p, f, ti):
            def total(p):
                return jnp.sum(functional.merge(graphdef, p, f).text_features(ti) * weights)

            return jax.grad(total)(p)

        cases = {
            "image tower forward": harness.Case(image_fn, lambda: (frozen, params, batch["image"])),
            "text tower forward+backward": harness.Case(text_fn, lambda ti=ti: (params, frozen, ti)),
            "train step": harness.Case(setup.step, lambda ti=ti: (setup.state(), frozen, batch, ti), (0,)),
        }
        if off is not None:
            cases["train step, OT off"] = harness.Case(
                off.step, lambda ti=ti: (off.state(), off.frozen, batch, ti), (0,)
            )
        for name, other in variants.items():
            cases[f"train step, {name}"] = harness.Case(
                other.step, lambda ti=ti, o=other: (o.state(), o.frozen, batch, ti), (0,)
            )
        measured = harness.compare(cases, rounds=args.rounds, budget_s=args.budget_s)
        for name, m in measured.items():
            rows.append(
                [
                    batch_size,
                    context,
                    name,
                    f"{m.compile_s:.1f}",
                    f"{m.run_s:.2f}",
                    f"{batch_size / m.run_s:.2f}" if name.startswith("train") else "",
                    f"{m.temp_bytes / 2**20:,.0f}",
                    m.runs,
                    f"{m.cores:.1f}",
                ]
            )
        floor = measured["image tower forward"].run_s + measured["text tower forward+backward"].run_s
        for name in [n for n in measured if n.startswith("train")]:
            rows.append(
                [
                    batch_size,
                    context,
                    f"{name} / (image fwd + text fwd+bwd)",
                    "",
                    f"{measured[name].run_s / floor:.2f}x",
                    "",
                    "",
                    "",
                    "",
                ]
            )
        print("  " + "\n  ".join(str(r) for r in rows[-len(cases) - 2 :]), flush=True)
    return rows


def worker(args: argparse.Namespace) -> None:
    """One scaling point: the sharded step on this process's (simulated) devices; prints JSON."""
    config = make_config(args.scaling_variant, "float32")
    setup = Setup(config, args.scaling_classes)
    mesh = sharding.make_mesh()
    replicated = sharding.replicated(mesh)
    frozen = jax.device_put(setup.frozen, replicated)
    ti = jax.device_put(setup.text_inputs(args.scaling_context), replicated)
    local = random_batch(
        sharding.local_batch_size(args.scaling_batch, mesh), args.scaling_size, args.scaling_classes
    )
    batch = sharding.to_global(local, mesh)
    state = jax.device_put(setup.state(), replicated)
    start = time.perf_counter()
    compiled = jax.jit(setup.step, donate_argnums=(0,)).lower(state, frozen, batch, ti).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, frozen, batch, ti)
    first = {k: float(v) for k, v in jax.device_get(metrics).items()}
    grid = args.scaling_size // setup.model.clip.spec.patch_size
    problems = re.findall(rf"f32\[(\d+),{grid * grid},{setup.model.num_prompts}\]", compiled.as_text())
    start = time.perf_counter()
    for _ in range(args.scaling_steps):
        state, metrics = compiled(state, frozen, batch, ti)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    print(
        "RESULT "
        + json.dumps(
            {
                "devices": len(jax.devices()),
                "compile_s": compile_s,
                "images_per_s": args.scaling_steps * args.scaling_batch / seconds,
                "temp_bytes": harness.memory_bytes(compiled),
                "loss": first["loss"],
                "grad_norm": first["grad_norm"],
                "batch_sharding": str(batch["image"].sharding.spec),
                "ot_problems": max(map(int, problems), default=-1),
                "ot_problems_global": len(setup.model.layers) * args.scaling_batch * args.scaling_classes,
            }
        )
    )


def scaling_rows(args: argparse.Namespace) -> list[list]:
    """Runs `worker` in a subprocess per device count; rows of the scaling table."""
    rows, reference = [], None
    for count in args.scaling_devices:
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"),
        )
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--scaling-variant",
            args.scaling_variant,
            "--scaling-size",
            str(args.scaling_size),
            "--scaling-batch",
            str(args.scaling_batch),
            "--scaling-classes",
            str(args.scaling_classes),
            "--scaling-context",
            str(args.scaling_context),
            "--scaling-steps",
            str(args.scaling_steps),
        ]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - start
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not lines:
            error = (done.stderr.strip().splitlines() or ["no output"])[-1][:100]
            rows.append([count, f"failed (exit {done.returncode}): {error}"] + [""] * 7)
            continue
        r = json.loads(lines[0][len("RESULT ") :])
        reference = reference or r
        rows.append(
            [
                r["devices"],
                r["batch_sharding"],
                f"{r['ot_problems']} of {r['ot_problems_global']}",
                f"{r['compile_s']:.1f}",
                f"{r['images_per_s']:.1f}",
                f"{r['temp_bytes'] / 2**20:,.0f}",
                f"{abs(r['loss'] - reference['loss']):.1e}",
                f"{abs(r['grad_norm'] - reference['grad_norm']) / reference['grad_norm']:.1e}",
                f"{wall:.0f}",
            ]
        )
        print(f"  {rows[-1]}", flush=True)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ViT-B/16")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=156, help="first K seen COCO-Stuff classes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--global-batch", type=int, default=16, help="compiled for memory")
    parser.add_argument(
        "--time-batch",
        type=int,
        default=None,
        help="timed batch (default: 2 on CPU, the global batch elsewhere)",
    )
    parser.add_argument(
        "--contexts", type=int, nargs="+", default=[77, 16], help="text context lengths compiled for memory"
    )
    parser.add_argument(
        "--time-contexts",
        type=int,
        nargs="+",
        default=None,
        help="text context lengths timed (default: 16 on CPU, all elsewhere)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="most round-robin rounds of the timed group")
    parser.add_argument(
        "--budget-s", type=float, default=30.0, help="no new round once the group's runs took this long"
    )
    parser.add_argument(
        "--no-ot-off",
        dest="ot_off",
        action="store_false",
        help="skip timing the step with model.ot.enabled=False",
    )
    parser.add_argument(
        "--step-variant",
        nargs="+",
        action="append",
        metavar=("NAME", "KEY=VALUE"),
        help="also time the step under these config overrides (repeatable), "
        "e.g. 'points' loss.num_points=12544",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument("--scaling-devices", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--scaling-variant", default="tiny")
    parser.add_argument("--scaling-size", type=int, default=112, help="tiny: 14x14 tokens")
    parser.add_argument("--scaling-batch", type=int, default=8)
    parser.add_argument("--scaling-classes", type=int, default=20)
    parser.add_argument("--scaling-context", type=int, default=16)
    parser.add_argument("--scaling-steps", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    start = time.perf_counter()
    cpu = jax.devices()[0].platform == "cpu"
    time_batch = args.time_batch or (2 if cpu else args.global_batch)
    args.time_contexts = args.time_contexts or ([min(args.contexts)] if cpu else args.contexts)
    print(harness.machine_line(), flush=True)
    memory, timing, scaling = [], [], []
    if not (args.no_memory and args.no_time):
        setup = Setup(make_config(args.variant, args.dtype), args.classes)
        print(f"built random {args.variant} ({args.dtype}) in {setup.build_s:.0f} s", flush=True)
        if not args.no_memory:
            memory = memory_rows(setup, args)
        if not args.no_time:
            timing = time_rows(setup, args, time_batch)
        del setup
    if args.scaling_devices:
        scaling = scaling_rows(args)
    total = time.perf_counter() - start

    print(
        f"\n{harness.machine_line()}\nZegOT {args.variant} at {args.size}x{args.size}, "
        f"{args.classes} COCO-Stuff seen classes, N=4, {args.dtype} towers, MPOT "
        f"{_ot_summary(harness.default_config().model.ot)}, AdamW. "
        f"Total {total / 60:.1f} min."
    )
    if memory:
        print(
            f"\nCompiled memory of one train step at global batch {args.global_batch} on one "
            "device (compiled, not run; arguments = frozen CLIP + state + batch):\n"
        )
        print(
            tables.markdown(
                ["batch", "text context", "OT", "compile (s)", "temp (GiB)", "arguments (GiB)"], memory
            )
        )
    if timing:
        note = " (small on purpose: CPU)" if cpu else ""
        print(
            f"\nTime at batch {time_batch}{note}: the three functions are compiled, then run "
            f"round-robin (at most {args.rounds} rounds, no new round after {args.budget_s:.0f} "
            "s of runs); best run; cores = process CPU s / wall s; compile 0.0 = compiled "
            "already for the memory table (same shapes); nan = compiled, not run (temp + "
            "arguments exceed the free memory):\n"
        )
        print(
            tables.markdown(
                [
                    "batch",
                    "text context",
                    "function",
                    "compile (s)",
                    "run (s)",
                    "images/s",
                    "temp (MiB)",
                    "runs",
                    "cores",
                ],
                timing,
            )
        )
    if scaling:
        print(
            f"\nScaling over simulated CPU devices: random {args.scaling_variant} CLIP at "
            f"{args.scaling_size}x{args.scaling_size}, global batch {args.scaling_batch}, "
            f"{args.scaling_classes} classes, context {args.scaling_context}; "
            f"{args.scaling_steps} timed steps after the first. All simulated devices share "
            f"this machine's {os.cpu_count()} cores: this measures the sharded path's overhead "
            "and agreement, not speed-up. Temp is per device; differences are against the first "
            "row's first step. OT problems per device: the largest `f32[P, M, N]` in the "
            "compiled step (P = L*B*K/devices when MPOT is sharded with the batch):\n"
        )
        print(
            tables.markdown(
                [
                    "devices",
                    "batch spec",
                    "OT problems per device (HLO)",
                    "compile (s)",
                    "images/s",
                    "temp (MiB)",
                    "|loss diff|",
                    "grad-norm rel. diff",
                    "process wall (s)",
                ],
                scaling,
            )
        )


if __name__ == "__main__":
    main()
