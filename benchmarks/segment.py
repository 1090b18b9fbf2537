"""Where the ZegOT segmenter's time and memory go: text tower, image tower + DLFA, MPOT.

ViT-B/16 at 512x512 (random weights), N=4 learned prompts, layers 5/7/11, epsilon 0.05 (the
`configs/common.py` defaults), K = 20 (VOC names) and 171 (COCO-Stuff names), batch 1 on a CPU.
Every function is jitted and compiled ahead of time; the tables give compile time, the best run,
XLA's temporary buffers (`compile().memory_analysis().temp_size_in_bytes`) and the cores used.

    .venv/bin/python benchmarks/segment.py                      # 7-10 min on 2 shared cores
    .venv/bin/python benchmarks/segment.py --classes 20 --size 224 --no-train   # quick look

1. Forward pieces: text features at the default text context (77) and a short one (16 holds the
   longest prompt, 14 tokens; with the causal mask the features are the same), `segment` with MPOT
   by ott (the library), by a plain `lax.scan` log-domain loop (`ot.sinkhorn_log_reference`,
   patched into the model for this benchmark only) and without OT (uniform plan), and the full
   jitted forward (text + segment) at the short context.
2. MPOT's share: `segment` with OT minus without, against `segment` alone (inference, where the
   text features are computed once per vocabulary) and against text + segment (training).
3. MPOT alone on the model's similarity shape `[L, B, K, M, N]`, forward: ott vs the plain loop,
   and the same iterations in the kernel (scaling) form, which needs no exp/log per iteration.
4. The train step (`make_train_step`, AdamW) with OT on and off: time and temp memory; the
   default 77-token context is compiled (memory) but only the short context is run.
Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import time
import types
import unittest.mock

import harness
import jax
import jax.numpy as jnp
import numpy as np

import zegot_jax.ot as zot
from zegot_jax import tables
from zegot_jax.data import class_names as names_lib
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.models import zegot as zegot_lib
from zegot_jax.train import optim
from zegot_jax.train import step as step_lib


def vocabulary(k: int) -> tuple[str, ...]:
    """VOC's 20 names for K=20, else the first K COCO-Stuff names."""
    if k == len(names_lib.VOC20):
        return names_lib.VOC20
    if not 0 < k <= len(names_lib.COCO_STUFF171):
        raise ValueError(f"--classes {k}: use 20 (VOC) or 1..171 (COCO-Stuff names).")
    return names_lib.COCO_STUFF171[:k]


def loop_mpot(
    similarity,
    *,
    epsilon,
    num_iterations,
    tau=None,
    plan_gradient=True,
    uniform=False,
    dtype=jnp.float32,
    **solver,
) -> zot.MPOTOutput:
    """`ot.mpot`'s contract computed with the plain loop (score and plan; diagnostics zero).

    The model's solver options (`solver`, `backward`, ...) are ignored: this is always the
    fixed-iteration log-domain loop, unrolled.
    """
    del solver
    if uniform:
        raise ValueError("loop_mpot: only the non-uniform solver is compared.")
    s = similarity.astype(dtype)
    m, n = s.shape[-2:]
    cost = 1.0 - s if plan_gradient else jax.lax.stop_gradient(1.0 - s)
    plan = zot.sinkhorn_log_reference(
        cost, epsilon=epsilon, num_iterations=num_iterations, tau=1.0 if tau is None else tau
    )
    zeros = jnp.zeros(s.shape[:-2], dtype)
    return zot.MPOTOutput(
        (m * n) * jnp.einsum("...mn,...mn->...m", plan, s),
        plan,
        zeros,
        zeros,
        jnp.full(s.shape[:-2], num_iterations, jnp.int32),
    )


def kernel_mpot(similarity, *, epsilon, num_iterations) -> zot.MPOTOutput:
    """The same iterations in the scaling (kernel) form: no exp or log inside the loop.

    `u = a / (K v)`, `v = b / (K^T u)` with `K = exp(-C / eps)`; fine in float32 for cosine
    costs at epsilon 0.05 (`K >= exp(-40)`), not at epsilon <= 0.01 (see stack-notes).
    """
    s = similarity.astype(jnp.float32)
    m, n = s.shape[-2:]
    kernel = jnp.exp((s - 1.0) / epsilon)

    def step(u, _):
        v = (1.0 / n) / jnp.einsum("...mn,...m->...n", kernel, u)
        return (1.0 / m) / jnp.einsum("...mn,...n->...m", kernel, v), v

    u, v = jax.lax.scan(step, jnp.ones(s.shape[:-1]), None, length=num_iterations)
    plan = u[..., :, None] * kernel * v[-1][..., None, :]
    zeros = jnp.zeros(s.shape[:-2])
    return zot.MPOTOutput(
        (m * n) * jnp.einsum("...mn,...mn->...m", plan, s),
        plan,
        zeros,
        zeros,
        jnp.full(s.shape[:-2], num_iterations, jnp.int32),
    )


def solver_patch(solver: str):
    """Context in which the model's MPOT is the plain loop ('loop') or the library's (ott)."""
    if solver == "loop":
        return unittest.mock.patch.object(zegot_lib, "ot", types.SimpleNamespace(mpot=loop_mpot))
    return unittest.mock.patch.object(zegot_lib, "ot", zot)


class Bench:
    """The CLIP (built once), the config and helpers that build models around it."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.config = harness.default_config()
        self.config.clip.weights = f"random:{args.variant}"
        self.config.clip.dtype = args.dtype
        start = time.perf_counter()
        self.clip = build_lib.load_clip(self.config)
        self.build_s = time.perf_counter() - start
        # This script compares ott's Sinkhorn with a plain loop at equal iteration counts, so the
        # model runs ott Sinkhorn (log domain) here, not the default Newton solver
        # (`benchmarks/mpot.py` compares the solvers).
        self.config.model.ot.update(solver="sinkhorn", domain="log")
        self.images = jax.random.normal(jax.random.key(1), (args.batch, args.size, args.size, 3))
        self.model = build_lib.build_model(self.config, self.clip)

    def parts(self, enabled: bool = True, iterations: int | None = None) -> functional.SplitModel:
        """The model with the given OT setting, split (same parameters for every setting)."""
        config = self.config.copy_and_resolve_references()
        config.model.ot.enabled = enabled
        config.model.ot.num_iterations = iterations or self.args.iterations[0]
        return functional.split_model(build_lib.build_model(config, self.clip))

    def text_inputs(self, k: int, context: int):
        """Learned-prompt token table of the K-class vocabulary at a text context length."""
        return self.model.text_inputs(vocabulary(k), context)


def forward_rows(bench: Bench, k: int, record: dict) -> list[list]:
    """Times text features, `segment` (ott / loop / off) and the full forward for one K."""
    args, rows = bench.args, []
    graphdef, params, frozen = bench.parts()

    def add(group: dict[str, harness.Measured]) -> None:
        for name, m in group.items():
            rows.append(
                [
                    k,
                    name,
                    f"{m.compile_s:.1f}",
                    f"{m.run_s:.2f}",
                    harness.mib(m.temp_bytes),
                    m.runs,
                    f"{m.cores:.1f}",
                ]
            )
            print(f"  {rows[-1]}", flush=True)
            record[(k, name)] = m

    def text_fn(p, f, ti):
        return functional.merge(graphdef, p, f).text_features(ti)

    contexts, cases = (args.context, args.short_context), {}
    for context in contexts:
        ti = bench.text_inputs(k, context)
        cases[f"text features, context {context}"] = harness.Case(text_fn, lambda ti=ti: (params, frozen, ti))
    add(harness.compare(cases, rounds=args.rounds, budget_s=args.budget_s))
    feats = [record[(k, f"text features, context {c}")].output for c in contexts]
    record[(k, "text diff")] = float(jnp.abs(feats[0] - feats[1]).max())

    t, cases = feats[1], {}
    for iterations in args.iterations:
        main = iterations == args.iterations[0]
        for solver in ("ott", "loop", "off") if main else ("ott",):
            g, p, f = bench.parts(solver != "off", iterations)

            def segment_fn(p, f, x, t, g=g, solver=solver):
                with solver_patch(solver):  # active while tracing
                    return functional.merge(g, p, f).segment(x, t).logits

            name = "segment, OT off" if solver == "off" else f"segment, OT {solver}, {iterations} it"
            cases[name] = harness.Case(segment_fn, lambda p=p, f=f: (p, f, bench.images, t))
    add(harness.compare(cases, rounds=args.rounds, budget_s=args.budget_s))
    ott, loop = (record[(k, f"segment, OT {s}, {args.iterations[0]} it")].output for s in ("ott", "loop"))
    record[(k, "loop diff")] = float(jnp.abs(ott - loop).max())

    ti, cases = bench.text_inputs(k, args.short_context), {}
    for enabled in (True, False):
        g, p, f = bench.parts(enabled)

        def full_fn(p, f, x, ti, g=g):
            return functional.merge(g, p, f)(x, ti).logits

        cases[f"full forward, context {args.short_context}, OT {'ott' if enabled else 'off'}"] = harness.Case(
            full_fn, lambda p=p, f=f: (p, f, bench.images, ti)
        )
    add(harness.compare(cases, rounds=args.rounds, budget_s=args.budget_s))
    return rows


def share_rows(args: argparse.Namespace, k: int, record: dict) -> list[list]:
    """MPOT's share of `segment` and of text + segment, from the forward measurements."""
    rows = []
    off = record[(k, "segment, OT off")].run_s
    for iterations in args.iterations:
        for solver in ("ott", "loop"):
            if (k, f"segment, OT {solver}, {iterations} it") not in record:
                continue
            on = record[(k, f"segment, OT {solver}, {iterations} it")].run_s
            alone = record[(k, f"MPOT {solver}, {iterations} it")].run_s
            for context in (args.context, args.short_context):
                text = record[(k, f"text features, context {context}")].run_s
                rows.append(
                    [
                        k,
                        f"{solver}, {iterations} it",
                        context,
                        f"{on - off:.2f}",
                        f"{alone:.2f}",
                        f"{on:.2f}",
                        f"{100 * (on - off) / on:.0f}%",
                        f"{100 * alone / on:.0f}%",
                        f"{text + on:.2f}",
                        f"{100 * (on - off) / (text + on):.0f}%",
                        f"{100 * alone / (text + on):.0f}%",
                    ]
                )
    full_on = record[(k, f"full forward, context {args.short_context}, OT ott")].run_s
    full_off = record[(k, f"full forward, context {args.short_context}, OT off")].run_s
    rows.append(
        [
            k,
            f"ott, {args.iterations[0]} it (full jitted forward, on - off)",
            args.short_context,
            f"{full_on - full_off:.2f}",
            "",
            "",
            "",
            "",
            f"{full_on:.2f}",
            f"{100 * (full_on - full_off) / full_on:.0f}%",
            "",
        ]
    )
    return rows


def mpot_rows(bench: Bench, k: int, record: dict) -> list[list]:
    """MPOT alone on `[L, B, K, M, N]`: ott against the plain loop (forward only)."""
    args, model = bench.args, bench.config.model
    grid = args.size // bench.clip.spec.patch_size
    shape = (len(model.layers), args.batch, k, grid * grid, model.num_prompts)
    s = 0.3 * jax.random.uniform(jax.random.key(0), shape, jnp.float32, -1.0, 1.0)
    cases = {}
    for iterations in args.iterations:
        ott_mpot = functools.partial(zot.mpot, solver="sinkhorn", domain="log")
        for solver, mpot in (("ott", ott_mpot), ("loop", loop_mpot), ("kernel loop", kernel_mpot)):

            def score(x, mpot=mpot, n=iterations):
                return mpot(x, epsilon=model.ot.epsilon, num_iterations=n).score

            cases[(solver, iterations)] = harness.Case(score, lambda: (s,))
    measured = harness.compare(cases, rounds=args.rounds, budget_s=args.budget_s)
    rows = []
    for (solver, iterations), m in measured.items():
        record[(k, f"MPOT {solver}, {iterations} it")] = m
        diff = jnp.abs(m.output - measured[("ott", iterations)].output).max()
        rows.append(
            [
                k,
                str(list(shape)),
                solver,
                iterations,
                f"{m.compile_s:.1f}",
                f"{m.run_s:.2f}",
                harness.mib(m.temp_bytes),
                f"{1e3 * m.run_s / iterations:.1f}",
                m.runs,
                f"{float(diff):.0e}",
            ]
        )
        print(f"  {rows[-1]}", flush=True)
    return rows


def train_rows(bench: Bench, k: int) -> list[list]:
    """The real train step with OT on and off: compile, time (short context), temp memory."""
    args, config, rows = bench.args, bench.config, []
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    rng = np.random.default_rng(0)
    batch = {
        "image": bench.images,
        "label": jnp.asarray(rng.integers(0, k, (args.batch, args.size, args.size)), jnp.int32),
    }
    for context, settings in ((args.short_context, (True, False)), (args.context, (True,))):
        ti, cases = bench.text_inputs(k, context), {}
        for enabled in settings:
            g, p, f = bench.parts(enabled)
            cases["ott" if enabled else "off"] = harness.Case(
                step_lib.make_train_step(g, tx, schedule, config),
                lambda p=p, f=f, ti=ti: (  # copies: the step donates its state
                    step_lib.init_state(jax.tree.map(jnp.copy, p), tx, 0),
                    f,
                    batch,
                    ti,
                ),
                (0,),
            )
        execute = context == args.short_context
        measured = harness.compare(cases, execute=execute, rounds=args.rounds, budget_s=args.budget_s)
        for name, m in measured.items():
            rows.append(
                [
                    k,
                    context,
                    name,
                    f"{m.compile_s:.1f}",
                    f"{m.run_s:.2f}" if execute else "not run",
                    harness.mib(m.temp_bytes),
                    m.runs,
                    f"{m.cores:.1f}" if execute else "",
                ]
            )
            print(f"  {rows[-1]}", flush=True)
        if execute:
            on, off = measured["ott"].run_s, measured["off"].run_s
            rows.append(
                [k, context, "MPOT share (on - off) / on", "", f"{100 * (on - off) / on:.0f}%", "", "", ""]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 171])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--variant", default="ViT-B/16")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--context", type=int, default=77, help="default text context length")
    parser.add_argument("--short-context", type=int, default=16)
    parser.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=[100, 20],
        help="Sinkhorn iterations; the first is the main setting",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="most round-robin rounds of each compared group"
    )
    parser.add_argument(
        "--budget-s", type=float, default=30.0, help="no new round once a group's runs took this long"
    )
    parser.add_argument("--no-train", action="store_true", help="skip the train-step table")
    args = parser.parse_args()

    start = time.perf_counter()
    print(harness.machine_line(), flush=True)
    bench = Bench(args)
    print(f"built random {args.variant} ({args.dtype}) in {bench.build_s:.0f} s", flush=True)
    record, forward, share, mpot, train = {}, [], [], [], []
    for k in args.classes:
        print(f"K={k}: forward pieces", flush=True)
        forward += forward_rows(bench, k, record)
        print(f"K={k}: MPOT alone", flush=True)
        mpot += mpot_rows(bench, k, record)
        share += share_rows(args, k, record)
        if not args.no_train:
            print(f"K={k}: train step", flush=True)
            train += train_rows(bench, k)
    total = time.perf_counter() - start

    print(
        f"\n{harness.machine_line()}\nZegOT {args.variant} at {args.size}x{args.size}, "
        f"batch {args.batch} (small on purpose: CPU), {args.dtype} towers, N=4, layers "
        f"{tuple(bench.config.model.layers)}, epsilon {bench.config.model.ot.epsilon}. Each "
        f"group of compared functions is compiled, then run round-robin (at most "
        f"{args.rounds} rounds, no new round after {args.budget_s:.0f} s of runs); times are "
        f"the best run; cores = process CPU s / wall s. Total {total / 60:.1f} min.\n"
    )
    print("Forward pieces (jitted):\n")
    print(
        tables.markdown(["K", "function", "compile (s)", "run (s)", "temp (MiB)", "runs", "cores"], forward)
    )
    diffs = ", ".join(
        f"K={k}: text features context {args.context} vs {args.short_context} max "
        f"|diff| {record[(k, 'text diff')]:.1e}, segment logits ott vs loop "
        f"{record[(k, 'loop diff')]:.1e}"
        for k in args.classes
    )
    print(f"\nChecks: {diffs}.\n")
    print(
        "MPOT's share of the forward. MPOT = segment with OT minus segment without (in-model) "
        "or MPOT alone on the same shape (table below); forward = segment (inference: text "
        "features once per vocabulary) or text + segment (training: text tower every step):\n"
    )
    print(
        tables.markdown(
            [
                "K",
                "MPOT",
                "text context",
                "in-model MPOT (s)",
                "MPOT alone (s)",
                "segment (s)",
                "share of segment (in-model)",
                "share of segment (alone)",
                "text + segment (s)",
                "share of text + segment (in-model)",
                "share of text + segment (alone)",
            ],
            share,
        )
    )
    print("\nMPOT alone, forward (random similarities in [-0.3, 0.3]):\n")
    print(
        tables.markdown(
            [
                "K",
                "shape [L,B,K,M,N]",
                "solver",
                "iterations",
                "compile (s)",
                "run (s)",
                "temp (MiB)",
                "ms / iteration",
                "runs",
                "max |score - ott score|",
            ],
            mpot,
        )
    )
    if train:
        print(f"\nTrain step (make_train_step, AdamW, batch {args.batch}, random labels):\n")
        print(
            tables.markdown(
                ["K", "text context", "OT", "compile (s)", "step (s)", "temp (MiB)", "runs", "cores"], train
            )
        )


if __name__ == "__main__":
    main()
