"""Text tower forward+backward w.r.t. the prompt contexts: full prompts vs a shared prefix.

`PromptLearner` encodes `[SOS] ctx_1..ctx_L <class name> . [EOT]` for every (class, prompt)
pair. Full: the K * N whole prompts through the 12 causal blocks. Prefix-shared
(`model.prefix_shared`): `[SOS] ctx` once per prompt, then only the class-name positions per
pair, attending to the prefix's cached keys and values. Both with and without `model.text_remat`
(each block rematerialised in the backward pass).

Random ViT-B/16 weights (the `VARIANTS` table), COCO-Stuff's 156 seen classes, N=4 prompts of
L=8 contexts, text context 77 (the prompt table is trimmed to the longest prompt, 16). Every case
is compiled (compile time and XLA temp memory from `memory_analysis()`), then the timed cases run
alternately, round after round, so a change of load on a shared machine hits them alike; each
run's time is printed beside the 1-minute load average read right after it.

    .venv/bin/python benchmarks/text_tower.py                 # full size: a few minutes on 2 cores
    .venv/bin/python benchmarks/text_tower.py --compile-only  # memory table only, no runs
    .venv/bin/python benchmarks/text_tower.py --smoke         # tiny CLIP, seconds

Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, NamedTuple

import harness
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zegot_jax import clip as clip_lib
from zegot_jax import tables
from zegot_jax.data import class_names
from zegot_jax.models import prompts

SETTINGS = {  # case name -> (prefix_shared, text_remat)
    "full": (False, False),
    "prefix-shared": (True, False),
    "full, remat": (False, True),
    "prefix-shared, remat": (True, True),
}


class Compiled(NamedTuple):
    """One compiled case: its run, compile time, temp bytes and FLOPs.

    `run()` returns `(features [K, N, D], gradient [N, L, W])`; `flops` is XLA's count for the
    compiled program (`cost_analysis()`, -1 when unavailable).
    """

    run: Any
    compile_s: float
    temp_bytes: int
    flops: float


def coco_seen(k: int) -> tuple[str, ...]:
    """The first K of COCO-Stuff's 156 seen class names."""
    names = class_names.COCO_STUFF171
    seen = tuple(names[i] for i in class_names.seen_indices("coco_stuff"))
    if not 0 < k <= len(seen):
        raise ValueError(f"--classes {k}: use 1..{len(seen)} (COCO-Stuff's seen classes).")
    return seen[:k]


def compile_case(
    clip: clip_lib.CLIP,
    setting: tuple[bool, bool],
    args: argparse.Namespace,
    tokens: jax.Array,
    eot: jax.Array,
) -> Compiled:
    """Compiles the forward+backward of one (prefix_shared, text_remat) setting.

    Every case starts from the same contexts (`nnx.Rngs(1)`); CLIP's state is an argument of the
    compiled function, as in the train step, not a constant folded into it.
    """
    learner = prompts.PromptLearner(
        args.prompts,
        args.context_tokens,
        clip.spec.text_width,
        init_std=0.02,
        rngs=nnx.Rngs(1),
        prefix_shared=setting[0],
        remat=setting[1],
    )
    graphdef, params, rest = nnx.split(learner, prompts.Trainable, ...)
    clip_graphdef, clip_state = nnx.split(clip)
    weights = jax.random.normal(jax.random.key(2), (len(eot), args.prompts, clip.spec.embed_dim))

    def forward_backward(params, rest, clip_state, tokens, eot, weights):
        frozen_clip = nnx.merge(clip_graphdef, clip_state)

        def loss(params):
            feats = nnx.merge(graphdef, params, rest)(frozen_clip, tokens, eot)  # [K, N, D]
            return jnp.sum(weights * feats), feats

        (_, feats), grad = jax.value_and_grad(loss, has_aux=True)(params)
        return feats, grad["context"][...]

    inputs = (params, rest, clip_state, tokens, eot, weights)
    start = time.perf_counter()
    compiled = jax.jit(forward_backward).lower(*inputs).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis() or {}
    return Compiled(
        lambda: compiled(*inputs), seconds, harness.memory_bytes(compiled), float(cost.get("flops", -1))
    )


def alternate(
    cases: dict[str, Compiled], rounds: int, budget_s: float
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]]:
    """Runs the cases in turn, round after round (no new round once `budget_s` is spent).

    Returns name -> [(seconds, 1-minute load average just after), ...] and each case's first
    output. A warm-up run of each case comes first, untimed.
    """
    outputs = {name: jax.block_until_ready(case.run()) for name, case in cases.items()}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    spent = 0.0
    for _ in range(rounds):
        for name, case in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(case.run())
            seconds = time.perf_counter() - start
            runs[name].append((seconds, os.getloadavg()[0]))
            spent += seconds
        if spent > budget_s:
            break
    return runs, outputs


def max_rel(a: Any, b: Any) -> str:
    """max |a - b| / max |b|, as a table cell."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return f"{np.abs(a - b).max() / np.abs(b).max():.1e}"


def memory_table(cases: dict[str, Compiled]) -> str:
    """Compile time, XLA temp memory and FLOPs of every case (nothing run)."""
    full = cases["full"].flops
    rows = [
        [
            name,
            *("on" if s else "off" for s in SETTINGS[name]),
            f"{case.compile_s:.1f}",
            harness.mib(case.temp_bytes),
            f"{case.flops / 1e9:.2f}",
            f"{full / case.flops:.2f}x",
        ]
        for name, case in cases.items()
    ]
    return tables.markdown(
        ["case", "prefix_shared", "text_remat", "compile (s)", "temp (MiB)", "GFLOP", "full / case GFLOP"],
        rows,
    )


def time_tables(runs: dict[str, list[tuple[float, float]]], outputs: dict[str, Any]) -> str:
    """Every run beside its load average, then best, median and the paired speed-up over full."""
    names = list(runs)
    per_round = [
        [i + 1, *(f"{1e3 * runs[n][i][0]:.4g} (load {runs[n][i][1]:.1f})" for n in names)]
        for i in range(min(len(r) for r in runs.values()))
    ]
    full = [s for s, _ in runs["full"]]
    summary = []
    for name in names:
        seconds = [s for s, _ in runs[name]]
        best = min(range(len(seconds)), key=seconds.__getitem__)
        ratios = [f / s for f, s in zip(full, seconds, strict=False)]
        feats, grad = outputs[name]
        summary.append(
            [
                name,
                f"{1e3 * seconds[best]:.4g}",
                f"{runs[name][best][1]:.1f}",
                f"{1e3 * statistics.median(seconds):.4g}",
                f"{min(full) / seconds[best]:.2f}x",
                f"{statistics.median(ratios):.2f}x",
                max_rel(feats, outputs["full"][0]),
                max_rel(grad, outputs["full"][1]),
            ]
        )
    return (
        tables.markdown(["round", *(f"{n} (ms)" for n in names)], per_round)
        + "\n\n"
        + tables.markdown(
            [
                "case",
                "best (ms)",
                "load at best",
                "median (ms)",
                "full / case (best)",
                "median of per-round full / case",
                "max rel. diff features",
                "max rel. diff gradient",
            ],
            summary,
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random CLIP, seconds")
    parser.add_argument("--classes", type=int, default=None, help="K (default 156; smoke 5)")
    parser.add_argument("--prompts", type=int, default=None, help="N (default 4; smoke 2)")
    parser.add_argument("--context-tokens", type=int, default=None, help="L (default 8; smoke 4)")
    parser.add_argument("--text-context", type=int, default=77, help="before trimming")
    parser.add_argument("--rounds", type=int, default=None, help="default 5; smoke 2")
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="no new round once the timed runs took this long"
    )
    parser.add_argument(
        "--time-remat", action="store_true", help="also time the two remat cases (always compiled for memory)"
    )
    parser.add_argument("--compile-only", action="store_true", help="memory table only")
    args = parser.parse_args()
    args.classes = args.classes or (5 if args.smoke else 156)
    args.prompts = args.prompts or (2 if args.smoke else 4)
    args.context_tokens = args.context_tokens or (4 if args.smoke else 8)
    args.rounds = args.rounds or (2 if args.smoke else 5)
    return args


def main() -> None:
    args = parse_args()
    variant = "tiny" if args.smoke else "ViT-B/16"
    clip = clip_lib.CLIP(clip_lib.get_spec(variant), rngs=nnx.Rngs(0))
    context = min(args.text_context, clip.spec.context_length)
    tokens, eot = prompts.prompt_token_table(
        coco_seen(args.classes), num_context=args.context_tokens, context_length=context
    )
    tokens, eot = jnp.asarray(tokens), jnp.asarray(eot)
    print(harness.machine_line(), flush=True)
    print(
        f"\n{variant} text tower (random weights), K={args.classes}, N={args.prompts}, "
        f"L={args.context_tokens}, prompt table {tokens.shape[1]} tokens (context {context}): "
        f"{args.prompts * args.classes} sequences; prefix-shared: {args.prompts} of "
        f"{1 + args.context_tokens} + {args.prompts * args.classes} of "
        f"{tokens.shape[1] - 1 - args.context_tokens} tokens\n",
        flush=True,
    )
    cases = {name: compile_case(clip, setting, args, tokens, eot) for name, setting in SETTINGS.items()}
    print(memory_table(cases), flush=True)
    if args.compile_only:
        return
    timed = {name: case for name, case in cases.items() if args.time_remat or "remat" not in name}
    runs, outputs = alternate(timed, args.rounds, args.budget_s)
    print("\n" + time_tables(runs, outputs))


if __name__ == "__main__":
    main()
