"""`train_seeds(config, seeds)`: S seeds of one config trained together, in one compiled step.

The step is `make_train_step`'s, vmapped over a leading seed axis `[S, ...]` of the train state
(parameters, optimizer state, step, RNG) and of the batch (each seed reads its own data order),
with the frozen CLIP and the text inputs shared (`in_axes=None`: neither copied nor vmapped). Each
seed is initialised exactly as `loop.train` initialises that seed alone, so seed s of the stack is
the run `train.py --config.seed=s` would make, to float32 rounding (`tests/train/test_seeds.py`).

One device, no checkpoints, no evaluation: this is the benchmark's trainer (the synthetic world's
ranking, `zegot_jax.experiments.ranking.rank_variants`); `loop.train` remains the trainer of
record for long, resumable, sharded runs.
"""

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zegot_jax.data.setup import DataSetup
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.train import optim
from zegot_jax.train import step as step_lib


class SeedRuns(NamedTuple):
    """S trained runs of one config.

    Attributes:
        seeds: the S seeds, in stack order.
        graphdef: the model graph (the same for every seed).
        params: the trainable state, every leaf `[S, ...]`.
        frozen: the frozen state (CLIP), shared, no seed axis.
        losses: `[num_steps, S]` float32 training loss of every step (host).
        compile_s: seconds spent tracing and compiling the step (0 when nothing trained).
        train_s: seconds of the training loop after compilation.
    """

    seeds: tuple[int, ...]
    graphdef: Any
    params: Any
    frozen: Any
    losses: np.ndarray
    compile_s: float
    train_s: float


def stack(trees: Sequence[Any]) -> Any:
    """Stacks equal-structure pytrees on a new leading axis: S trees of `[...]` -> `[S, ...]`."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Seed `index` of a stacked pytree: `[S, ...]` -> `[...]`."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


def init_states(
    config: ml_collections.ConfigDict, seeds: Sequence[int], clip: Any = None
) -> tuple[functional.SplitModel, dict[str, Any]]:
    """Builds the model once per seed around one CLIP.

    Returns seed 0's parts and the stacked train states (each exactly `step.init_state` of the model
    `loop.train` builds for that seed).

    Returns:
        `(parts, state)`: `parts.frozen` is shared; `state` leaves are `[S, ...]`.
    """
    clip = clip if clip is not None else build_lib.load_clip(config)
    tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
    parts, states = None, []
    for seed in seeds:
        seeded = ml_collections.ConfigDict(config.to_dict())
        seeded.seed = int(seed)
        split = functional.split_model(build_lib.build_model(seeded, clip))
        parts = parts or split
        states.append(step_lib.init_state(split.params, tx, int(seed)))
    return parts, stack(states)


def _check_finite(
    losses: np.ndarray, seeds: Sequence[int], first_step: int, ot_config: ml_collections.ConfigDict
) -> None:
    bad = ~np.isfinite(losses)
    if bad.any():
        step, column = np.argwhere(bad)[0]
        raise FloatingPointError(
            f"Seed {seeds[column]} diverged at step {first_step + step}: the "
            f"loss is NaN or Inf. "
            f"{step_lib.divergence_fix(['loss'], ot_config)}"
        )


class SeedProgram(NamedTuple):
    """What `train_seeds` steps: the parts, the stacked state, the vmapped step and the inputs.

    Attributes:
        parts: seed 0's split model (`parts.frozen` is shared by every seed).
        state: the stacked train states, leaves `[S, ...]`.
        step: `vmap(step)(state, frozen, batch, text_inputs) -> (state, metrics)`, not jitted.
        text_inputs: the training classes' prompt inputs (shared).
        next_batch: `() -> {key: [S, B, ...]}`, each seed's next batch from its own data order.
    """

    parts: functional.SplitModel
    state: dict[str, Any]
    step: Any
    text_inputs: Any
    next_batch: Any


def seed_program(config: ml_collections.ConfigDict, seeds: Sequence[int], clip: Any = None) -> SeedProgram:
    """Builds S seeds of `config` around one CLIP, ready to step (not compiled yet)."""
    data = DataSetup.from_config(config)
    parts, state = init_states(config, seeds, clip)
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    step = step_lib.make_train_step(
        parts.graphdef, tx, schedule, config, pseudo_label_ids=data.pseudo_label_ids
    )
    model = functional.merge(parts.graphdef, unstack(state["params"], 0), parts.frozen)
    text_inputs = model.text_inputs(data.train_classes, config.clip.text_context_length)
    iterators = [data.train_iterator(config.train.global_batch_size, seed=s) for s in seeds]

    def next_batch():  # [S, B, ...]: each seed's own batch
        batches = [next(it) for it in iterators]
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    return SeedProgram(parts, state, jax.vmap(step, in_axes=(0, None, 0, None)), text_inputs, next_batch)


def train_seeds(
    config: ml_collections.ConfigDict, seeds: Sequence[int], *, clip: Any = None, num_steps: int | None = None
) -> SeedRuns:
    """Trains `config` once per seed, all seeds in one vmapped, jitted step.

    Args:
        config: the experiment config (its `seed` is ignored: `seeds` replaces it).
        seeds: S distinct seeds; seed s sets the initialisation and the data order as `seed` does.
        clip: the frozen CLIP (loaded from the config when not given).
        num_steps: train only this many steps (default `train.num_steps`; the schedule still
          spans `train.num_steps`).

    Returns:
        The `SeedRuns`.

    Raises:
        ValueError: no seeds, or a seed given twice.
        FloatingPointError: a seed's loss became NaN or Inf (checked every `train.log_every` steps).
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds}: give one or more distinct seeds.")
    total = config.train.num_steps if num_steps is None else int(num_steps)
    if total <= 0:
        parts, state = init_states(config, seeds, clip)
        return SeedRuns(
            seeds,
            parts.graphdef,
            state["params"],
            parts.frozen,
            np.zeros((0, len(seeds)), np.float32),
            0.0,
            0.0,
        )
    parts, state, vmapped, text_inputs, next_batch = seed_program(config, seeds, clip)
    start = time.perf_counter()
    batch = next_batch()
    compiled = jax.jit(vmapped, donate_argnums=(0,)).lower(state, parts.frozen, batch, text_inputs).compile()
    compile_s = time.perf_counter() - start
    start, losses, checked = time.perf_counter(), [], 0
    for index in range(total):
        state, metrics = compiled(state, parts.frozen, batch, text_inputs)
        losses.append(metrics["loss"])
        if index + 1 < total:
            batch = next_batch()
        if (index + 1) % config.train.log_every == 0 or index + 1 == total:
            _check_finite(np.asarray(jax.device_get(losses[checked:])), seeds, checked + 1, config.model.ot)
            checked = len(losses)
    losses = np.asarray(jax.device_get(losses), np.float32)
    return SeedRuns(
        seeds, parts.graphdef, state["params"], parts.frozen, losses, compile_s, time.perf_counter() - start
    )
