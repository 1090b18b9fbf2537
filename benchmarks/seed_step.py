"""The synthetic world's S-seed train step: on all cores, or pinned to one core per process.

Why `rank_variants(jobs=N)` pins one worker per core: the vmapped step of the small synthetic
model is many small operations, and XLA's CPU runtime splitting them over threads can cost more
than it gains. This times the same compiled step (the default config, 5 seeds, real rendered
batches) in three settings, each in its own process so that JAX starts under its CPU affinity:

- `all cores`: a process that may use every core (XLA's threads);
- `one core`: a process pinned to one core (`os.sched_setaffinity` before JAX starts);
- `N pinned at once`: N such processes, one per core, timed simultaneously (the ranking's case).

    .venv/bin/python benchmarks/seed_step.py            # about 2 minutes on 2 cores

Each process: compile, 1 warm-up step, then 4 rounds of 5 steps; prints the best and median ms per
step. Linux only (CPU affinity). Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import harness

from zegot_jax import tables


def worker(seeds: int, core: int | None) -> None:
    """Times the step in this process (pinned to `core` when given); prints one JSON line."""
    if core is not None:  # before JAX's CPU client starts (first use): it sizes its threads
        os.sched_setaffinity(0, {core})
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from zegot_jax.experiments import ranking  # noqa: PLC0415
    from zegot_jax.train import seeds as seeds_lib  # noqa: PLC0415

    ranking.enable_compilation_cache()
    program = seeds_lib.seed_program(harness.synthetic_config(), range(seeds))
    frozen, text = program.parts.frozen, program.text_inputs
    batches = [program.next_batch() for _ in range(6)]
    compiled = jax.jit(program.step).lower(program.state, frozen, batches[0], text).compile()
    state = program.state
    jax.block_until_ready(compiled(state, frozen, batches[0], text))
    rounds = []
    for _ in range(4):
        start = time.perf_counter()
        for batch in batches[1:]:
            out = compiled(state, frozen, batch, text)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - start) / (len(batches) - 1))
    print(
        "RESULT "
        + json.dumps(
            {"core": core, "best_ms": 1e3 * min(rounds), "median_ms": 1e3 * float(np.median(rounds))}
        ),
        flush=True,
    )


def run(seeds: int, cores: list[int | None]) -> list[dict]:
    """Starts one worker per entry of `cores` at once; their results."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", "--seeds", str(seeds)]
            + ([] if core is None else ["--core", str(core)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for core in cores
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1200)
        lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"worker failed (exit {proc.returncode}): {err.strip()[-300:]}")
        results.append(json.loads(lines[0][len("RESULT ") :]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.seeds, args.core)
        return
    cores = sorted(os.sched_getaffinity(0))
    print(harness.machine_line(), flush=True)
    rows = []
    for name, chosen in (
        ("all cores", [None]),
        ("one core", cores[:1]),
        (f"{len(cores)} pinned at once", cores),
    ):
        for result in run(args.seeds, chosen):
            core = "any" if result["core"] is None else result["core"]
            rows.append([name, core, f"{result['best_ms']:.0f}", f"{result['median_ms']:.0f}"])
            print(f"  {rows[-1]}", flush=True)
    print(
        f"\n{harness.machine_line()}\nThe {args.seeds}-seed vmapped train step of "
        "configs/synthetic.py (batch 16 per seed), ms per step:\n"
    )
    print(tables.markdown(["setting", "core", "best (ms)", "median (ms)"], rows))


if __name__ == "__main__":
    main()
