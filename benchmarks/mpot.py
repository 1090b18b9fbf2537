"""MPOT's forward solvers and backwards: accuracy on realistic similarities, then speed and memory.

Accuracy: for each setting, the largest difference of its plan from the
100-iteration log-domain plan in cell-mass units (`max |T - T_100| * M N`; the target for a faster
default is 1e-4), its marginal error and the iterations it ran, on
- `synthetic`: the similarities `[L, B, K, M, N]` of a trained synthetic-world run (`--workdir`,
  skipped when absent), i.e. what a trained model hands to MPOT; `synthetic x2`: the same doubled
  (twice as sharp, a stress case);
- `cosine 0.3` / `cosine 1.0`: uniform random similarities in [-0.3, 0.3] / [-1, 1] at the training
  shape (the first is the spread of CLIP ViT-B/16 dense cosines, the second the worst case).
Each plan is also compared with a float64 converged solve (2000 iterations): where 100 log-domain
iterations have not converged, a setting that is closer to convergence is further from them.

Speed and memory: forward and forward+backward time of `sum(score)` (best of `--rounds`, the
settings run round-robin) and XLA's temp buffers, at one step's OT: `[L=3, B=2, K, 1024, 4]`.

    .venv/bin/python benchmarks/mpot.py                      # K in (20, 171)
    .venv/bin/python benchmarks/mpot.py --smoke              # tiny shapes, seconds
Prints Markdown tables with the load average; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import harness
import jax
import jax.numpy as jnp
import numpy as np

import zegot_jax.ot as zot
from zegot_jax import tables

EPSILON = 0.05
DEFAULT_WORKDIR = "runs/results/zegot_defaults_seed0"
# name -> mpot keyword arguments (num_iterations 100 unless given).
SETTINGS = {
    "log 100, unrolled": dict(backward="unrolled"),
    "log 100, implicit": dict(),
    "kernel 100, implicit": dict(domain="kernel"),
    "auto 100, implicit": dict(domain="auto"),
    "threshold 1e-5, implicit": dict(threshold=1e-5),
    "threshold 1e-6, implicit": dict(threshold=1e-6),
    "kernel 300, threshold 1e-6, implicit": dict(domain="kernel", threshold=1e-6, num_iterations=300),
    "newton 5, implicit": dict(solver="newton", num_iterations=5),
    "newton 8, implicit": dict(solver="newton", num_iterations=8),
    "newton 10, implicit": dict(solver="newton", num_iterations=10),
}


def solve(s: jax.Array, options: dict, **extra) -> zot.MPOTOutput:
    return zot.mpot(s, epsilon=EPSILON, **{"num_iterations": 100, **options, **extra})


def synthetic_similarities(workdir: str, images: int = 8) -> np.ndarray | None:
    """`[L, B, K, M, N]` similarities of a trained synthetic run on its evaluation images."""
    if not Path(workdir, "config.json").exists() and not Path(workdir, "checkpoints").exists():
        return None
    from zegot_jax.data import transforms  # noqa: PLC0415 (only with a workdir)
    from zegot_jax.evaluation import run as run_lib  # noqa: PLC0415
    from zegot_jax.models import functional  # noqa: PLC0415
    from zegot_jax.synthetic import source, world  # noqa: PLC0415

    config = run_lib.run_config(harness.synthetic_config(), workdir)
    parts, params = run_lib.load_trained(config, workdir)
    model = functional.merge(parts.graphdef, params, parts.frozen)
    data = source.SyntheticSource("test", size=config.synthetic.image_size, num_images=images)
    batch = np.stack([transforms.normalize(data[i]["image"]) for i in range(images)])
    inputs = model.text_inputs(world.CLASS_NAMES, config.clip.text_context_length)
    sim = model(jnp.asarray(batch), inputs).similarity  # [L, B, K, h, w, N]
    return np.asarray(sim).reshape(*sim.shape[:3], -1, sim.shape[-1])


def accuracy_rows(name: str, s: jax.Array) -> list[list]:
    """Plan distance to the 100-iteration log plan, marginal error and iterations, per setting."""
    cells = s.shape[-1] * s.shape[-2]
    reference = jax.jit(lambda x: solve(x, {}).plan)(s)
    with jax.enable_x64(True):
        exact = solve(jnp.asarray(s, jnp.float64), {}, num_iterations=2000, dtype=jnp.float64)
        exact = np.asarray(exact.plan)

    def row(setting: str, out: zot.MPOTOutput) -> list:
        return [
            name,
            setting,
            f"{float(jnp.abs(out.plan - reference).max()) * cells:.1e}",
            f"{np.abs(np.asarray(out.plan, np.float64) - exact).max() * cells:.1e}",
            f"{float(out.marginal_error.max()):.1e}",
            int(out.iterations.max()),
        ]

    return [
        row(setting, jax.jit(lambda x, o=options: solve(x, o))(s))
        for setting, options in SETTINGS.items()
        if "unrolled" not in setting
    ]


def speed_rows(k: int, shape: tuple[int, ...], rounds: int) -> list[list]:
    """Forward and forward+backward time and temp memory per setting, K classes."""
    s = 0.3 * jax.random.uniform(jax.random.key(0), shape, jnp.float32, -1.0, 1.0)
    forward = {
        n: harness.Case(lambda x, o=o: solve(x, o).score, lambda: (s,))
        for n, o in SETTINGS.items()
        if "unrolled" not in n
    }
    backward = {
        n: harness.Case(jax.grad(lambda x, o=o: jnp.sum(solve(x, o).score)), lambda: (s,))
        for n, o in SETTINGS.items()
    }
    fwd = harness.compare(forward, rounds=rounds, budget_s=60)
    bwd = harness.compare(backward, rounds=rounds, budget_s=120)
    load = f"{os.getloadavg()[0]:.1f}"
    return [
        [
            k,
            n,
            f"{1e3 * fwd[n].run_s:.1f}" if n in fwd else "(as implicit)",
            f"{1e3 * bwd[n].run_s:.1f}",
            harness.mib(bwd[n].temp_bytes),
            load,
        ]
        for n in SETTINGS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 171])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="trained synthetic run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accuracy_only", action="store_true", help="skip the timing")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (a test runs this)")
    args = parser.parse_args()
    layers, batch, pixels = (1, 1, 64) if args.smoke else (3, 2, 1024)
    classes = [3] if args.smoke else args.classes
    print(harness.machine_line(), f"; epsilon {EPSILON}, shape [{layers}, {batch}, K, {pixels}, 4]")

    key = jax.random.key(1)
    sets = {
        f"cosine {a}": a * jax.random.uniform(key, (layers, batch, 8, pixels, 4), jnp.float32, -1.0, 1.0)
        for a in (0.3, 1.0)
    }
    synthetic = None if args.smoke else synthetic_similarities(args.workdir)
    if synthetic is not None:
        sets = {"synthetic": jnp.asarray(synthetic), "synthetic x2": 2 * jnp.asarray(synthetic), **sets}
    rows = [row for name, s in sets.items() for row in accuracy_rows(name, s)]
    print(
        "\n"
        + tables.markdown(
            [
                "similarities",
                "setting",
                "vs log 100 (x MN)",
                "vs converged (x MN)",
                "marginal error",
                "iterations",
            ],
            rows,
        )
    )
    if args.accuracy_only:
        return
    rows = [row for k in classes for row in speed_rows(k, (layers, batch, k, pixels, 4), args.rounds)]
    print(
        "\n"
        + tables.markdown(["K", "setting", "fwd (ms)", "fwd+bwd (ms)", "temp fwd+bwd (MiB)", "load"], rows)
    )


if __name__ == "__main__":
    main()
