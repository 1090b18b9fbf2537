"""Rank variants of one config over seeds (on the synthetic world), and tabulate them.

    rows = rank_variants(config, {"default": {}, "eps 0.1": {"model.ot.epsilon": 0.1}},
                         seeds=range(5))
    print(report(rows))   # mean ± std, 95% t-intervals, differences paired by seed vs 'default'

Each variant is the base config with dotted-key overrides. Its S seeds train together in one
compiled program (`zegot_jax.train.seeds.train_seeds`: the step vmapped over the seeds' train
states and data orders, the frozen CLIP shared) and are scored together
(`zegot_jax.evaluation.seed_scores`), so a variant compiles once, whatever S. JAX's persistent
compilation cache (`enable_compilation_cache`) lets a repeated ranking skip XLA. The command is
`benchmarks/synthetic_results.py`.

`compare_variants` trains one resumable `loop.train` run per variant instead, with checkpoints,
figures and a workdir that `Segmenter.from_run` loads (the OT notebook's saved runs).
"""

import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from zegot_jax import tables
from zegot_jax.configs.overrides import override
from zegot_jax.experiments.report import interval, paired_table, report, scores_table  # noqa: F401

COLUMNS = ("miou_seen", "miou_unseen", "hiou", "miou", "pixel_acc")
STATISTICS = ("prompt_diversity", "plan_entropy")


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str:
    """Turns on JAX's persistent compilation cache (every program, however small or quick).

    A directory already configured (`JAX_COMPILATION_CACHE_DIR`, the test suite's) is kept;
    otherwise `directory`, else `$ZEGOT_CACHE/jax_compilation`, else
    `~/.cache/zegot_jax/jax_compilation`: beside the synthetic CLIP, never in the repository.

    Returns:
        The cache directory in use.
    """
    current = jax.config.jax_compilation_cache_dir
    if not current:
        root = os.environ.get("ZEGOT_CACHE") or Path.home() / ".cache" / "zegot_jax"
        current = str(Path(directory or Path(root) / "jax_compilation").expanduser())
        Path(current).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", current)
        compilation_cache.reset_cache()  # a process that compiled before: read the new setting
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return current


def run_dir(name: str, seed: int) -> str:
    """The directory of one (variant, seed) under a ranking's workdir (RESULTS.md's layout)."""
    keep = "".join(c if c.isalnum() else "_" for c in name.lower())
    return "_".join(w for w in keep.split("_") if w)[:60] + f"_seed{seed}"


def score_seeds(
    config: ml_collections.ConfigDict, runs: Any, *, statistics: bool = True
) -> list[dict[str, Any]]:
    """One row per seed of `runs` (`train_seeds`' result): scores, prompt statistics, loss."""
    from zegot_jax.data.setup import DataSetup  # noqa: PLC0415
    from zegot_jax.evaluation import seed_scores as eval_seeds  # noqa: PLC0415 (pulls in the pipeline)
    from zegot_jax.models.functional import merge  # noqa: PLC0415

    data, count = DataSetup.from_config(config), len(runs.seeds)
    text = eval_seeds.text_features_seeds(
        runs.graphdef, runs.params, runs.frozen, data.class_names, config.clip.text_context_length, count
    )
    summaries = eval_seeds.evaluate_seeds(
        config,
        runs.graphdef,
        runs.params,
        runs.frozen,
        data.eval_iterator(),
        data.class_names,
        data.unseen,
        seen_penalty=data.seen_penalty(config),
        num_seeds=count,
        text=text,
    )
    rows = [
        {"seed": s, **{k: summary[k] for k in COLUMNS}, "per_class_iou": summary["per_class_iou"]}
        for s, summary in zip(runs.seeds, summaries, strict=True)
    ]
    if statistics:
        first = jax.tree.map(lambda leaf: leaf[0], runs.params)
        patch = merge(runs.graphdef, first, runs.frozen).clip.spec.patch_size
        stats = eval_seeds.prompt_statistics_seeds(
            runs.graphdef, runs.params, runs.frozen, text, data.eval_iterator(), patch=patch, num_seeds=count
        )
        for row, extra in zip(rows, stats, strict=True):
            row.update(extra)
    for column, row in enumerate(rows):
        row["final_loss"] = float(runs.losses[-1, column]) if len(runs.losses) else float("nan")
    return rows


def rank_variants(
    base_config: ml_collections.ConfigDict,
    variants: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int] = range(5),
    *,
    workdir: str | None = None,
    deterministic: Collection[str] = (),
    eval_only: Mapping[str, str] | None = None,
    statistics: bool = True,
    log: Callable[[str], None] | None = print,
    jobs: int = 1,
    plugins: Sequence[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Trains and scores S seeds of each variant; the seeds of a variant run as one program.

    With `jobs > 1` the variants are spread over that many worker processes, each pinned to one
    CPU core: the small synthetic step gains less from a second thread than from a second
    variant (BENCHMARKS.md, "Ranking a variant over seeds": two pinned workers beat one process
    on 2 cores). Use it on CPUs only (on an accelerator the workers would share the device; see
    `default_jobs`); each worker loads the CLIP and compiles its own step.

    Args:
        base_config: the experiment config every variant starts from (the synthetic world's,
          or any config whose evaluation images share one size).
        variants: name -> dotted-key overrides, e.g. `{'model.ot.epsilon': 0.01}`; the first is
          the reference of `report`'s paired differences.
        seeds: the seeds; seed s sets the initialisation and the data order (`config.seed`).
        workdir: if given, each (variant, seed) row is kept in `workdir/run_dir(name, seed)/
          row.json`, and rows found there are read, not trained again.
        deterministic: variants without randomness (no training): one seed, the first, stands for
          every seed.
        eval_only: variant -> the variant whose trained parameters it scores (a change of
          inference only); that variant is trained here if needed.
        statistics: also measure prompt diversity and plan entropy (`prompt_stats`).
        log: called with one JSON line per finished (variant, seed); None is silent. (With
          `jobs > 1` the workers print their lines instead.)
        jobs: worker processes (1: train in this process).
        plugins: modules or `.py` files each worker imports before training (`load_plugins`), for
          transports registered outside the package; with `jobs=1` register them in this process.

    Returns:
        name -> one row per seed: `{'seed', 'miou_seen', 'miou_unseen', 'hiou', 'miou',
        'pixel_acc', 'per_class_iou', 'prompt_diversity', 'plan_entropy', 'final_loss',
        'seconds' (the variant's wall time / its seeds), 'compile_s' (its train step's), 'train_s'
        (its training after compiling), 'eval_s' (scoring all its seeds)}` (scores in [0, 1]).

    Raises:
        KeyError: an override names a field the config does not have (before any training).
        ValueError: no variants or seeds, an `eval_only` source that is not a variant, or
          `jobs < 1`.
    """
    seeds, eval_only = tuple(int(s) for s in seeds), dict(eval_only or {})
    if not variants or not seeds:
        raise ValueError("Give {name: {dotted.key: value}} and one or more seeds.")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: give a number of worker processes >= 1.")
    configs = {name: override(base_config, overrides) for name, overrides in variants.items()}
    if missing := {s for s in eval_only.values() if s not in configs}:
        raise ValueError(f"eval_only names {sorted(missing)}, which are not variants.")
    if jobs > 1:
        return _rank_in_workers(
            base_config,
            variants,
            configs,
            seeds,
            jobs,
            plugins,
            dict(
                workdir=workdir,
                deterministic=tuple(deterministic),
                eval_only=eval_only,
                statistics=statistics,
                log=_print_now if log else None,
            ),
        )
    enable_compilation_cache()
    trained: dict[str, Any] = {}  # variant -> its SeedRuns, reused by the eval-only variants
    results: dict[str, list[dict[str, Any]]] = {}
    for name, config in configs.items():
        wanted = seeds[:1] if name in deterministic else seeds
        rows = read_rows(workdir, name, wanted) if workdir else {}
        todo = [s for s in wanted if s not in rows]
        if todo:
            source = eval_only.get(name, name)
            for row in _train_and_score(config, configs[source], source, todo, trained, statistics):
                rows[row["seed"]] = row
                if workdir:
                    path = Path(workdir) / run_dir(name, row["seed"])
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "row.json").write_text(json.dumps(row))
                if log:
                    log(
                        json.dumps(
                            {"variant": name, **{k: v for k, v in row.items() if k != "per_class_iou"}}
                        )
                    )
        results[name] = [{**rows[s], "seed": s} for s in wanted]
    return results


def _train_and_score(
    config: ml_collections.ConfigDict,
    source_config: ml_collections.ConfigDict,
    source: str,
    seeds: list[int],
    trained: dict[str, Any],
    statistics: bool,
) -> list[dict[str, Any]]:
    """The rows of `seeds` of one variant.

    `source`'s runs (trained now unless `trained` has them) scored under `config`, with the
    variant's times.
    """
    from zegot_jax.train import seeds as train_seeds  # noqa: PLC0415

    start = time.perf_counter()
    runs = trained.get(source)
    if runs is None or not set(seeds) <= set(runs.seeds):
        runs = trained[source] = train_seeds.train_seeds(source_config, seeds)
    runs, scoring = _select(runs, seeds), time.perf_counter()
    scored = score_seeds(config, runs, statistics=statistics)
    seconds, scoring = time.perf_counter() - start, time.perf_counter() - scoring
    for row in scored:
        row.update(
            seconds=seconds / len(seeds), compile_s=runs.compile_s, train_s=runs.train_s, eval_s=scoring
        )
    return scored


def _rank_in_workers(
    base_config: ml_collections.ConfigDict,
    variants: Mapping[str, Mapping[str, Any]],
    configs: Mapping[str, ml_collections.ConfigDict],
    seeds: tuple[int, ...],
    jobs: int,
    plugins: Sequence[str],
    options: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """`rank_variants` with each variant (and the eval-only variants that score it) in a worker."""
    from zegot_jax.ot import registry  # noqa: PLC0415

    for name, config in configs.items():
        solver = config.model.ot.solver
        if plugins and solver not in registry.registered_transports():
            continue  # registered by a plugin, in the workers
        if registry.get_transport(solver).fn.__module__ == "__main__" and not plugins:
            raise ValueError(
                f"Variant {name!r} uses transport {solver!r}, defined in this session only: the "
                "worker processes of jobs > 1 cannot see it. Put it in a .py file and pass "
                "plugins=['that_file.py'] (--plugin), or rank with jobs=1."
            )
    eval_only = options["eval_only"]
    groups = [
        [name] + [n for n, source in eval_only.items() if source == name]
        for name in variants
        if name not in eval_only
    ]
    cores = usable_cores()
    context = multiprocessing.get_context("spawn")  # never fork a process that runs JAX
    queue = context.Queue()
    for index in range(min(jobs, len(groups))):
        queue.put(cores[index % len(cores)] if cores else None)
    results: dict[str, list[dict[str, Any]]] = {}
    with futures.ProcessPoolExecutor(
        min(jobs, len(groups)),
        mp_context=context,
        initializer=_start_worker,
        initargs=(queue, tuple(plugins)),
    ) as pool:
        tasks = [
            pool.submit(
                rank_variants,
                base_config,
                {name: variants[name] for name in group},
                seeds,
                **{**options, "eval_only": {n: eval_only[n] for n in group[1:]}},
            )
            for group in groups
        ]
        for task in tasks:
            results.update(task.result())
    return {name: results[name] for name in variants}


def usable_cores() -> list[int]:
    """The CPU cores this process may run on; empty where the OS does not say (no pinning)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def default_jobs() -> int:
    """`rank_variants`'s `jobs` to use here.

    One worker per usable core on a CPU backend, one process on an accelerator (whose workers would
    share the device).
    """
    if jax.default_backend() != "cpu":
        return 1
    return len(usable_cores()) or os.cpu_count() or 1


def _print_now(line: str) -> None:
    """A worker's log: each line as it comes (a child's stdout is block-buffered in a file)."""
    print(line, flush=True)


def _start_worker(queue: Any, plugins: tuple[str, ...]) -> None:
    """Starts a ranking worker, with the plugins' transports registered.

    It is pinned to its core before JAX starts (its CPU client then runs one thread).
    """
    core = queue.get()
    if core is not None:
        os.sched_setaffinity(0, {core})
    from zegot_jax.ot import registry  # noqa: PLC0415

    registry.load_plugins(plugins)


def read_rows(workdir: str, name: str, seeds: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The finished rows of variant `name` kept in `workdir` (seed -> row), for `seeds`."""
    paths = {s: Path(workdir) / run_dir(name, s) / "row.json" for s in seeds}
    return {s: {**json.loads(p.read_text()), "seed": s} for s, p in paths.items() if p.exists()}


def _select(runs: Any, seeds: Sequence[int]) -> Any:
    """The runs of `seeds` (a subset of `runs.seeds`, in that order)."""
    index = np.asarray([runs.seeds.index(s) for s in seeds])
    if tuple(seeds) == runs.seeds:
        return runs
    return runs._replace(
        seeds=tuple(seeds), params=jax.tree.map(lambda x: x[index], runs.params), losses=runs.losses[:, index]
    )


def slug(name: str) -> str:
    """A directory name for a variant ('OT eps=0.01' -> 'ot-eps-0.01')."""
    text = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
    if not text:
        raise ValueError(f"Variant name {name!r} has no letters or digits to name its directory.")
    return text


def compare_variants(
    base_config: ml_collections.ConfigDict,
    variants: Mapping[str, Mapping[str, Any]],
    workdir_root: str,
    *,
    train_fn: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
) -> list[dict[str, Any]]:
    """Trains and evaluates each variant; returns one row per variant.

    Args:
        base_config: the experiment config every variant starts from.
        variants: name -> dotted-key overrides, e.g. `{'model.ot.epsilon': 0.01}`.
        workdir_root: each variant trains in `workdir_root/slug(name)`.
        train_fn: `(config, workdir) -> evaluation summary`; default `loop.train`.

    Returns:
        Rows `{'variant', 'overrides', 'miou_seen', 'miou_unseen', 'hiou', 'miou', 'pixel_acc',
        'seconds', 'workdir'}`.

    Raises:
        KeyError: an override names a field the config does not have (checked before any training).
        ValueError: no variants, or two names with the same directory.
    """
    if not variants:
        raise ValueError("No variants to compare: give {name: {dotted.key: value}}.")
    dirs = {name: slug(name) for name in variants}
    if len(set(dirs.values())) != len(dirs):
        raise ValueError(f"Variant names {list(dirs)} map to the same directory; rename them.")
    configs = {name: override(base_config, overrides) for name, overrides in variants.items()}
    if train_fn is None:
        from zegot_jax.train import loop  # noqa: PLC0415 (the loop pulls in the data pipeline)

        train_fn = loop.train
    rows = []
    for name, config in configs.items():
        workdir = str(Path(workdir_root) / dirs[name])
        start = time.perf_counter()
        summary = train_fn(config, workdir)
        row = {"variant": name, "overrides": dict(variants[name])}
        row.update({k: float(summary[k]) for k in COLUMNS if k in summary})
        row.update(seconds=round(time.perf_counter() - start, 1), workdir=workdir)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (scores in percent)."""
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    return tables.markdown(
        ("variant", "overrides", *columns, "seconds"),
        [
            (
                r["variant"],
                ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(base)",
                *(f"{100 * r[c]:.1f}" if c in r else "" for c in columns),
                r["seconds"],
            )
            for r in rows
        ],
    )
