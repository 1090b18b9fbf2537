"""One command that measures an accelerator, within a time budget (5 minutes by default).

It reports the device, float32 and bf16 train-step time, MFU, memory and float32 agreement with the
CPU.

    python benchmarks/accelerator.py              # one GPU or a TPU host: at most about 5 min
    python benchmarks/accelerator.py --smoke      # tiny random CLIP, K=3/5, on CPU (the test)
    python benchmarks/accelerator.py --set model.ot.backward=unrolled    # any config field

Tables (Markdown):
1. Device: platform, kind, count, jax version, memory limit, the peak FLOP/s used for MFU.
2. Agreement: a tiny config and batch (the configs' ':smoke' model: tiny random CLIP, 32x32,
   K=5, batch 2, float32) through `value_and_grad` of the training loss on the CPU and on the device,
   same parameters and batch: relative difference of the loss, and the largest difference of any
   gradient leaf relative to that leaf's largest entry. Gradients, not updated parameters: under
   warm-up the first AdamW update is scaled by 1e-6, so updated parameters agree to float32
   rounding whatever the gradients. The device runs at the default matmul precision (what the
   timed rows use: possibly TF32 on GPUs, bf16 passes on TPUs) and at 'highest'.
3. Train step: the default config around random weights ('random:ViT-B/16'), 512x512, global
   batch 16 on the first device, N=4, layers 5/7/11, the default MPOT (10 Newton steps, implicit
   backward), the first K=15 and K=156 seen COCO-Stuff classes, `clip.dtype` float32 and
   bfloat16 (OT and losses stay float32).
   Compiled ahead of time, run up to `--rounds` times, best run. MFU = XLA's cost-analysis FLOPs
   of the compiled step / step time / the device's peak dense FLOP/s (`zegot_jax.train.perf`, the
   FLOP count and peak table training logs with; 'n/a' for a device not listed). Peak memory:
   `memory_stats()['peak_bytes_in_use']`, the process's peak so far, so rows run smallest first
   and a row during which it did not rise reads '<= X'; where the device reports none (CPU), the
   compiled temp size. Out of memory is a row, not a crash.

4. Evaluation: `evaluator.make_batch_scorer` (what `evaluate` runs per batch: sliding window,
   upsampling to the label size, arg-max, confusion matrix) on `--eval-batch` images of 512x683
   with all K=171 COCO-Stuff classes, float32: images/s.
5. Ranking: the synthetic world's 5-seed ranking of one variant (`--rank-set`, default the
   uniform plan `model.ot.enabled=False`) against the default, as
   `benchmarks/synthetic_results.py --variant` runs it on the CPU (`rank_variants`: each
   variant's seeds trained in one vmapped program and scored in one), including the one-time
   pretraining of the small CLIP when it is not cached. Wall time, per-variant compile time,
   scores and the paired hIoU difference. `--smoke`: the ':smoke' world, 2 seeds, 2 steps.

`--smoke` also sets XLA's backend optimisation level to 0 (half the compile time on a CPU; timings
at that size mean nothing). Budget: each part is estimated from the parts measured before it (a
guess for the first) and skipped, with the estimate printed, when it would end past `--budget-s`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import harness
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from harness import Setup, make_config, random_batch, seen_classes

from zegot_jax import tables
from zegot_jax.configs.overrides import override
from zegot_jax.models import losses
from zegot_jax.train import perf

SMOKE = {"variant": "tiny", "size": 32, "classes": [3, 5]}  # and `harness.apply_smoke`
TINY = {"classes": 5, "size": 32, "batch": 2}  # the agreement check, on the ':smoke' model
GUESS = {
    "build_s": 30.0,
    "compile_s": 90.0,
    "step_s": 2.0,
    "agreement_s": 60.0,  # before
    "rank_s": 90.0,
    "pretrain_s": 120.0,
}  # measuring (ranking: 2 variants x 5 seeds)
RANK_HEADER = [
    "variant",
    "seeds",
    "steps",
    "mIoU(S)",
    "mIoU(U)",
    "hIoU",
    "hIoU - default [95%]",
    "compile (s)",
    "variant wall / seeds (s)",
]
STEP_HEADER = [
    "clip.dtype",
    "K",
    "compile (s)",
    "step (ms)",
    "images/s",
    "GFLOP / step (XLA)",
    "TFLOP/s",
    "MFU",
    "MFU vs TF32 peak",
    "peak memory (GiB)",
    "loss",
    "runs",
]


class Budget:
    """The deadline, and the durations measured so far (guesses until then)."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.build_s, self.compile_s, self.step_s = (GUESS[k] for k in ("build_s", "compile_s", "step_s"))
        self.k: int | None = None

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def row_estimate(self, k: int, rounds: int) -> float:
        """Compile plus runs, the step time scaled up with K (text tower and MPOT grow with it)."""
        scale = max(1.0, k / self.k) if self.k else 1.0
        return self.compile_s + (rounds + 1) * self.step_s * scale

    def record(self, k: int, measured: harness.Measured) -> None:
        self.compile_s, self.step_s, self.k = measured.compile_s, measured.run_s, k


def device_rows() -> list[list]:
    """The device table's rows."""
    devices = jax.devices()
    first = devices[0]
    peaks = perf.peaks(first.device_kind)
    stats = first.memory_stats() or {}
    tflops = " / ".join("n/a" if p is None else f"{p / 1e12:,.1f}" for p in peaks)
    return [
        ["platform", first.platform],
        ["device kind", first.device_kind],
        ["device count", len(devices)],
        ["jax / jaxlib", f"{jax.__version__} / {jaxlib.__version__}"],
        ["memory limit (GiB)", harness.gib(int(stats.get("bytes_limit", -1)))],
        ["peak dense TFLOP/s: float32 / TF32 / bf16", tflops],
        ["host", harness.machine_line()],
    ]


def max_relative(a, b) -> float:
    """Largest |a - b| of any leaf relative to the largest |b| of that leaf."""
    return max(
        float(
            np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
            / max(float(np.max(np.abs(np.asarray(y, np.float64)))), 1e-30)
        )
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def setup_key(variant: str, dtype: str, smoke: bool, overrides: dict) -> tuple:
    return variant, dtype, smoke, repr(sorted(overrides.items()))


def get_setup(cache: dict, variant: str, dtype: str, smoke: bool, overrides: dict) -> Setup:
    """Model, optimizer and step for a random CLIP and `clip.dtype`, built once per key.

    The config is at the ':smoke' size when `smoke`; then `overrides` apply. (Setup's own K is
    unused: rows pass theirs.)
    """
    key = setup_key(variant, dtype, smoke, overrides)
    if key not in cache:
        config = make_config(variant, dtype)
        cache[key] = Setup(override(harness.apply_smoke(config) if smoke else config, overrides), 1)
    return cache[key]


def agreement_rows(args: argparse.Namespace, budget: Budget, cache: dict) -> list[list]:
    """Loss and gradients of a tiny config on the CPU against the device (see the docstring)."""
    if budget.left() < GUESS["agreement_s"]:
        return [
            [
                "skipped",
                f"estimated {GUESS['agreement_s']:.0f} s > {budget.left():.0f} s left",
                "",
                "",
                "",
                "",
            ]
        ]
    try:
        cpu, device = jax.devices("cpu")[0], jax.devices()[0]
    except RuntimeError as error:  # JAX_PLATFORMS without 'cpu'
        return [["skipped", f"no CPU backend: {str(error).splitlines()[0][:100]}", "", "", "", ""]]
    setup = get_setup(cache, "tiny", "float32", True, args.overrides)
    inputs = (
        setup.params,
        setup.frozen,
        random_batch(TINY["batch"], TINY["size"], TINY["classes"]),
        setup.model.text_inputs(seen_classes(TINY["classes"]), setup.config.clip.text_context_length),
        jax.random.key(0),
    )  # the point-sampled loss (loss.num_points > 0) draws points
    grad_fn = jax.jit(jax.value_and_grad(losses.make_loss_fn(setup.graphdef, setup.config), has_aux=True))

    def run_on(target):
        (loss, _), grads = grad_fn(*jax.device_put(inputs, target))
        return jax.device_get((loss, grads))

    cpu_loss, cpu_grads = run_on(cpu)
    rows = []
    for precision in ["default", "highest"]:  # the same on a CPU; run there too (the test)
        context = (
            contextlib.nullcontext() if precision == "default" else jax.default_matmul_precision(precision)
        )
        with context:
            loss, grads = run_on(device)
        rows.append(
            [
                precision,
                f"{float(cpu_loss):.6g}",
                f"{float(loss):.6g}",
                f"{abs(float(loss) - float(cpu_loss)) / abs(float(cpu_loss)):.1e}",
                f"{max_relative(grads, cpu_grads):.1e}",
                device.device_kind,
            ]
        )
    return rows


def mfu_cell(flops: float, seconds: float, peak: float | None) -> str:
    """`perf.mfu` as a percentage cell; 'n/a' when the peak or the FLOPs are unknown."""
    fraction = perf.mfu(flops, seconds, peak)
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def step_row(
    setup: Setup, dtype: str, k: int, args: argparse.Namespace, budget: Budget, memory: PeakMemory
) -> list:
    """Compiles and times the step for K classes; one table row (out of memory included)."""
    text = setup.model.text_inputs(seen_classes(k), setup.config.clip.text_context_length)
    batch = jax.tree.map(jnp.asarray, random_batch(args.batch, args.size, k))
    try:
        m = harness.measure(
            setup.step,
            lambda: (setup.state(), setup.frozen, batch, text),
            rounds=args.rounds,
            budget_s=max(budget.left() / 4, 1.0),
            donate_argnums=(0,),
        )
    except Exception as error:  # noqa: BLE001 (only allocation failures become rows)
        if not harness.is_out_of_memory(error):
            raise
        return [dtype, k, f"out of memory: {str(error).splitlines()[0][:120]}"] + [""] * 9
    if math.isnan(m.run_s):
        return [
            dtype,
            k,
            f"{m.compile_s:.1f}",
            "not run: compiled temp + arguments "
            f"{harness.gib(m.temp_bytes + m.argument_bytes)} GiB exceed the free "
            f"{harness.gib(harness.free_bytes())} GiB",
        ] + [""] * 8
    budget.record(k, m)
    peaks = perf.peaks(jax.devices()[0].device_kind)
    peak = getattr(peaks, "bfloat16" if dtype == "bfloat16" else "float32")
    tf32 = mfu_cell(m.flops, m.run_s, peaks.tf32) if dtype == "float32" else ""
    return [
        dtype,
        k,
        f"{m.compile_s:.1f}",
        f"{1e3 * m.run_s:,.1f}",
        f"{args.batch / m.run_s:,.1f}",
        f"{m.flops / 1e9:,.4g}",
        f"{m.flops / m.run_s / 1e12:,.2f}",
        mfu_cell(m.flops, m.run_s, peak),
        tf32,
        memory.cell(m),
        f"{float(m.output[1]['loss']):.5g}",
        m.runs,
    ]


class PeakMemory:
    """The device's peak bytes in use as a table cell (see the module docstring)."""

    def __init__(self, device):
        self.device, self.last = device, -1

    def cell(self, measured: harness.Measured) -> str:
        stats = self.device.memory_stats() or {}
        if "peak_bytes_in_use" not in stats:
            return f"{harness.gib(measured.temp_bytes)} (compiled temp)"
        peak, rose = int(stats["peak_bytes_in_use"]), int(stats["peak_bytes_in_use"]) > self.last
        self.last = max(self.last, peak)
        return harness.gib(peak) if rose else f"<= {harness.gib(peak)}"


def step_rows(args: argparse.Namespace, budget: Budget, cache: dict) -> list[list]:
    """Every (dtype, K) row, small K first, zig-zag over dtypes so peak memory tends to rise."""
    order = [
        (dtype, k)
        for i, k in enumerate(sorted(args.classes))
        for dtype in (args.dtypes if i % 2 == 0 else args.dtypes[::-1])
    ]
    rows, memory = [], PeakMemory(jax.devices()[0])
    for dtype, k in order:
        built = setup_key(args.variant, dtype, args.smoke, args.overrides) in cache
        estimate = (0.0 if built else budget.build_s) + budget.row_estimate(k, args.rounds)
        if estimate > budget.left():
            rows.append(
                [dtype, k, f"skipped: estimated {estimate:.0f} s > {max(budget.left(), 0):.0f} s left"]
                + [""] * 9
            )
        else:
            start = time.perf_counter()
            setup = get_setup(cache, args.variant, dtype, args.smoke, args.overrides)
            if not built:
                budget.build_s = time.perf_counter() - start
            rows.append(step_row(setup, dtype, k, args, budget, memory))
        print(f"  {rows[-1]}", flush=True)
    return rows


EVAL_HEADER = ["clip.dtype", "K", "image size", "batch", "compile (s)", "batch time (ms)", "images/s", "runs"]


def evaluation_rows(args: argparse.Namespace, budget: Budget, cache: dict) -> list[list]:
    """Batched evaluation's time per call, hence images/s (one device, float32).

    Each call is `evaluator.make_batch_scorer` (sliding window, all K classes) on `--eval-batch`
    images of 512x683 (COCO-Stuff's usual shape at short side 512).
    """
    from zegot_jax.data import class_names as names_lib  # noqa: PLC0415
    from zegot_jax.evaluation import evaluator  # noqa: PLC0415

    k = len(names_lib.DATASETS["coco_stuff"][0]) if not args.smoke else SMOKE["classes"][-1]
    size = (args.size, args.size * 4 // 3)
    estimate = budget.compile_s + (args.rounds + 1) * budget.step_s
    if estimate > budget.left():
        return [
            [
                "float32",
                k,
                f"{size[0]}x{size[1]}",
                args.eval_batch,
                f"skipped: estimated {estimate:.0f} s > {max(budget.left(), 0):.0f} s left",
            ]
            + [""] * 3
        ]
    setup = get_setup(cache, args.variant, "float32", args.smoke, args.overrides)
    config = setup.config
    names = names_lib.DATASETS["coco_stuff"][0][:k]
    text = evaluator.text_features_of(
        setup.graphdef, setup.params, setup.frozen, names, config.clip.text_context_length
    )
    confusion = evaluator.make_batch_scorer(setup.graphdef, config, jnp.zeros((k,)))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((args.eval_batch, *size, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, k, (args.eval_batch, *size)), jnp.int32)
    m = harness.measure(
        confusion,
        lambda: (setup.params, setup.frozen, text, images, labels),
        rounds=args.rounds,
        budget_s=max(budget.left() / 2, 1.0),
    )
    return [
        [
            "float32",
            k,
            f"{size[0]}x{size[1]}",
            args.eval_batch,
            f"{m.compile_s:.1f}",
            f"{1e3 * m.run_s:,.1f}",
            f"{args.eval_batch / m.run_s:,.2f}",
            m.runs,
        ]
    ]


def ranking_rows(args: argparse.Namespace, budget: Budget) -> tuple[list[list], str]:
    """The synthetic ranking (see the docstring): table rows and a line of wall times."""
    from zegot_jax.experiments import ranking, report  # noqa: PLC0415
    from zegot_jax.synthetic import pretrain  # noqa: PLC0415

    config = harness.synthetic_config("smoke" if args.smoke else None)
    seeds = range(2 if args.smoke else 5)
    if args.smoke:
        config.train.num_steps = 2
    cached = pretrain.cache_path(config.synthetic.pretrain).exists()
    estimate = GUESS["rank_s"] + (0.0 if cached else GUESS["pretrain_s"])
    if estimate > budget.left():
        return [], f"skipped: estimated {estimate:.0f} s > {max(budget.left(), 0):.0f} s left"
    start = time.perf_counter()
    pretrain.pretrained_clip(config.synthetic.pretrain, progress=False)
    pretrain_s, start = time.perf_counter() - start, time.perf_counter()
    name = " ".join(args.rank_set)
    rows = ranking.rank_variants(
        config, {"default": {}, name: args.rank_overrides}, seeds, statistics=False, log=None
    )
    rank_s = time.perf_counter() - start

    def cell(results, key):
        mean, std, _ = report.interval([100 * r[key] for r in results])
        return f"{mean:.1f} ± {std:.1f}"

    table = []
    for variant, results in rows.items():
        diff = ""
        if variant != "default":
            by_seed = {r["seed"]: r["hiou"] for r in rows["default"]}
            mean, _, half = report.interval([100 * (r["hiou"] - by_seed[r["seed"]]) for r in results])
            diff = f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"
        table.append(
            [
                variant,
                len(results),
                config.train.num_steps,
                cell(results, "miou_seen"),
                cell(results, "miou_unseen"),
                cell(results, "hiou"),
                diff,
                f"{results[0]['compile_s']:.1f}",
                f"{results[0]['seconds']:.1f}",
            ]
        )
    where = "cached" if cached else f"pretrained here in {pretrain_s:.0f} s"
    return table, f"ranking {rank_s:.1f} s wall (small CLIP {where})"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random CLIP, K=3/5 (tests)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip what would end later")
    parser.add_argument("--variant", default=None, help="random CLIP (ViT-B/16; smoke tiny)")
    parser.add_argument("--size", type=int, default=None, help="crop (512; smoke 32)")
    parser.add_argument("--batch", type=int, default=16, help="global batch, on one device")
    parser.add_argument("--classes", type=int, nargs="+", default=None, help="K (15 156; smoke 3 5)")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--rounds", type=int, default=5, help="most timed runs per row")
    parser.add_argument(
        "--eval-batch", type=int, default=8, help="images per evaluation call (the evaluation row)"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every row, e.g. model.ot.backward=unrolled",
    )
    parser.add_argument(
        "--rank-set",
        nargs="+",
        default=["model.ot.enabled=False"],
        metavar="KEY=VALUE",
        help="the variant ranked against the default",
    )
    parser.add_argument("--no-ranking", action="store_true", help="skip the ranking table")
    args = parser.parse_args(argv)
    args.rank_overrides = harness.parse_overrides(args.rank_set)
    full = {"variant": "ViT-B/16", "size": 512, "classes": [15, 156]}
    for key, value in (full | ({k: SMOKE[k] for k in full} if args.smoke else {})).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.overrides = harness.parse_overrides(args.set)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.smoke:
        harness.quick_compile()
    budget, cache = Budget(args.budget_s), {}
    print("## Device\n\n" + tables.markdown(["field", "value"], device_rows()) + "\n", flush=True)
    agreement = agreement_rows(args, budget, cache)
    print(
        "## Float32 agreement with the CPU (tiny config, loss and gradients)\n\n"
        + tables.markdown(
            [
                "matmul precision",
                "CPU loss",
                "device loss",
                "loss rel. diff",
                "gradient max rel. diff",
                "device",
            ],
            agreement,
        )
        + "\n",
        flush=True,
    )
    steps = step_rows(args, budget, cache)
    print(
        f"\n## Train step: random {args.variant} at {args.size}x{args.size}, global batch "
        f"{args.batch} on one device; overrides: {' '.join(args.set) or 'none'}; "
        f"{max(budget.left(), 0):.0f} s of the {args.budget_s:.0f} s budget left\n\n"
        + tables.markdown(STEP_HEADER, steps),
        flush=True,
    )
    evaluation = evaluation_rows(args, budget, cache)
    print(
        f"\n## Evaluation: random {args.variant}, sliding window (crop {args.size}), every "
        f"class, one device\n\n" + tables.markdown(EVAL_HEADER, evaluation),
        flush=True,
    )
    if not args.no_ranking:
        ranking, times = ranking_rows(args, budget)
        print(
            f"\n## Ranking on the synthetic world: {' '.join(args.rank_set)} against the "
            f"default, seeds vmapped; {times}\n\n" + tables.markdown(RANK_HEADER, ranking)
        )


if __name__ == "__main__":
    main()
