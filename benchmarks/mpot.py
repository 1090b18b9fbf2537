"""Benchmark MPOT: ott-jax (`zegot_jax.ot.mpot`) against a plain fixed-iteration log-domain loop.

Shapes are one training step's OT at 512x512 with ViT-B/16: `[L=3, B=2, K, M=1024, N=4]`
similarities (32x32 tokens, 4 prompts, 3 layers), epsilon 0.05. For each implementation and setting
it reports the compile time of forward+backward, the forward and forward+backward wall times
(median of `--repeats` runs after the compile), and XLA's temporary buffer size of both programs
(`jax.jit(f).lower(x).compile().memory_analysis().temp_size_in_bytes`).

    .venv/bin/python benchmarks/mpot.py                      # K in (20, 171), 100 and 20 iterations
    .venv/bin/python benchmarks/mpot.py --classes 20 --iterations 20 --repeats 2

Implementations: `ott` = ott Sinkhorn, unrolled backward (default); `ott implicit` = ott with
implicit differentiation; `loop` = `sinkhorn_log_reference` (plain `lax.scan`); `loop+remat` = the
same with `jax.checkpoint` per iteration. Prints a Markdown table; asserts nothing.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import zegot_jax.ot as zot

EPSILON = 0.05


def _implementations(num_iterations: int) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """name -> `similarity [..., M, N] -> score [..., M]`."""

    def loop(s: jax.Array, remat: bool) -> jax.Array:
        m, n = s.shape[-2:]
        plan = zot.sinkhorn_log_reference(1.0 - s, epsilon=EPSILON, num_iterations=num_iterations,
                                          remat=remat)
        return (m * n) * jnp.sum(plan * s, axis=-1)

    return {
        "ott": lambda s: zot.mpot(s, epsilon=EPSILON, num_iterations=num_iterations).score,
        "ott implicit": lambda s: zot.mpot(s, epsilon=EPSILON, num_iterations=num_iterations,
                                           implicit_diff=True).score,
        "loop": lambda s: loop(s, False),
        "loop+remat": lambda s: loop(s, True),
    }


def _measure(fn: Callable[[jax.Array], jax.Array], x: jax.Array, repeats: int
             ) -> tuple[float, float, int]:
    """(compile seconds, median run seconds, temp bytes) of `jax.jit(fn)` on `x`."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(x).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp = int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1
    jax.block_until_ready(compiled(x))  # first run (allocations)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs), temp


def run(classes: list[int], iterations: list[int], *, layers: int = 3, batch: int = 2,
        pixels: int = 1024, prompts: int = 4, repeats: int = 3) -> list[dict]:
    """Measures every implementation for every (K, iterations); returns table rows."""
    rows = []
    for k in classes:
        shape = (layers, batch, k, pixels, prompts)
        s = 0.3 * jax.random.uniform(jax.random.key(0), shape, jnp.float32, -1.0, 1.0)
        for n in iterations:
            for name, score in _implementations(n).items():
                fwd = _measure(score, s, repeats)
                bwd = _measure(jax.grad(lambda x, f=score: jnp.sum(f(x))), s, repeats)
                rows.append({"K": k, "iterations": n, "impl": name, "compile_s": bwd[0],
                             "fwd_ms": 1e3 * fwd[1], "fwd_bwd_ms": 1e3 * bwd[1],
                             "temp_fwd_mib": fwd[2] / 2**20, "temp_fwd_bwd_mib": bwd[2] / 2**20})
                print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    return (f"| {r['K']} | {r['iterations']} | {r['impl']} | {r['compile_s']:.1f} | "
            f"{r['fwd_ms']:.0f} | {r['fwd_bwd_ms']:.0f} | {r['temp_fwd_mib']:.0f} | "
            f"{r['temp_fwd_bwd_mib']:.0f} |")


def markdown_table(rows: list[dict]) -> str:
    head = ("| K | iters | impl | compile fwd+bwd (s) | fwd (ms) | fwd+bwd (ms) | "
            "temp fwd (MiB) | temp fwd+bwd (MiB) |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + [_row(r) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 171])
    parser.add_argument("--iterations", type=int, nargs="+", default=[100, 20])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"devices: {jax.devices()}; shape [3, 2, K, 1024, 4], epsilon {EPSILON}")
    rows = run(args.classes, args.iterations, repeats=args.repeats)
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
