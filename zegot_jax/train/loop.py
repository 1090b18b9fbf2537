"""`train(config, workdir)`: the sharded training loop with resume, logging and evaluation.

One jitted step over a data-parallel mesh (see `sharding.py`); the frozen CLIP weights are placed
replicated once and passed beside the donated train state. Checkpoints hold only what trains plus the
data iterator state, so a killed run resumes exactly where it stopped. The step is compiled ahead
of time (its compile time and XLA's FLOP count go into the log, `perf`); SIGTERM stops every
process at one agreed step after saving it (`preemption`); a lost peer process ends the others
with one line (`zegot_jax.distributed`).
"""

import contextlib
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from zegot_jax import distributed, errors, ot, sharding, storage
from zegot_jax.configs import checks as config_checks
from zegot_jax.data.setup import DataSetup
from zegot_jax.evaluation import evaluator, figure
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.runs import checkpoint as ckpt_lib
from zegot_jax.runs import gcs_lock, workdir_lock
from zegot_jax.runs import saved as saved_run
from zegot_jax.train import launch, optim, perf
from zegot_jax.train import step as step_lib
from zegot_jax.train.metric_writer import MetricWriter
from zegot_jax.train.preemption import Preempted, Preemption


def _check_finite(
    metrics: dict[str, float], step: int, last_saved: int | None, ot_config: ml_collections.ConfigDict
) -> None:
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if not bad:
        return
    kept = (
        f"the last good checkpoint (step {last_saved}) is kept"
        if last_saved
        else "no checkpoint was written yet"
    )
    raise FloatingPointError(
        f"Training diverged at step {step}: {', '.join(bad)} is NaN or "
        f"Inf (checked every train.log_every steps and before each "
        f"checkpoint); {kept}. {step_lib.divergence_fix(bad, ot_config)}"
    )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from `workdir` if it holds a checkpoint), then evaluates.

    Returns:
        The final evaluation summary (also the last row of `workdir/metrics.jsonl`), or
        `{'preempted_at': step}` after a SIGTERM.

    Raises:
      ValueError, FileNotFoundError: a bad config value, workdir, resume or dataset, before
        anything is built or written (see `launch.check`); the workdir is busy.
      errors.LostPeer: another process of a multi-process run is gone.
    """
    distributed.start(
        config.distributed.initialize, heartbeat_timeout_s=config.distributed.heartbeat_timeout_s
    )
    workdir = storage.normalise(workdir)  # `~` expanded; a scheme other than gs:// refused
    launch.check(config, workdir, num_devices=jax.device_count())
    remote = storage.is_remote(workdir)
    created = not remote and not os.path.lexists(workdir)
    if not remote:  # an object store has no folders to make
        Path(workdir).mkdir(parents=True, exist_ok=True)
    lock = gcs_lock if remote else workdir_lock
    try:
        with lock.hold(workdir, enabled=jax.process_index() == 0):
            return _train(config, workdir)
    except Exception as e:
        if distributed.lost_peer(e):
            raise errors.LostPeer(distributed.lost_peer_message(e)) from e
        _remove_if_created(workdir, created)
        raise
    except BaseException:
        _remove_if_created(workdir, created)
        raise


def _remove_if_created(workdir: str, created: bool) -> None:
    if created:  # a run that failed before writing anything leaves nothing behind
        with contextlib.suppress(OSError):
            os.rmdir(workdir)  # only if empty; never through a link


class _Run(NamedTuple):
    """What the loop steps: the data, the split model, the jitted step and its inputs."""

    data: DataSetup
    mesh: Any
    graphdef: Any
    frozen: Any
    text_inputs: Any
    train_step: Any
    tx: Any


def _build(config: ml_collections.ConfigDict) -> tuple[_Run, dict[str, Any]]:
    """The model, optimiser and jitted step of `config`, and a fresh train state (replicated)."""
    mesh = sharding.make_mesh()
    data = DataSetup.from_config(config)
    model = build_lib.build_model(config)
    if sizes := config_checks.patch_problems(config, model.clip.spec.patch_size):
        raise ValueError(f"Invalid config: {'; '.join(sizes)}")  # weights not named by variant
    parts = functional.split_model(model)
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    replicated = sharding.replicated(mesh)
    state = jax.device_put(step_lib.init_state(parts.params, tx, config.seed), replicated)
    text_inputs = jax.device_put(
        model.text_inputs(data.train_classes, config.clip.text_context_length), replicated
    )
    train_step = jax.jit(
        step_lib.make_train_step(
            parts.graphdef, tx, schedule, config, pseudo_label_ids=data.pseudo_label_ids
        ),
        donate_argnums=(0,),
    )
    return _Run(
        data, mesh, parts.graphdef, jax.device_put(parts.frozen, replicated), text_inputs, train_step, tx
    ), state


def _resume(
    config: ml_collections.ConfigDict, workdir: str, run: _Run, state: dict[str, Any]
) -> tuple[ckpt_lib.Checkpointer, Any, dict[str, Any], int]:
    """The checkpointer, the train iterator and the state to start from, and its step.

    A workdir with checkpoints resumes from its newest intact step (damaged newer ones are set
    aside); a new one starts from `train.init_from`'s parameters when given.
    """
    start = ckpt_lib.saved_step(workdir)
    if start is None and config.train.init_from:  # before checkpoints/ is created
        params = saved_run.read_params(config.train.init_from, ckpt_lib.abstract(state["params"]))
        state = {**state, "params": params}  # the step and optimizer state start fresh
    ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints)
    local_batch = sharding.local_batch_size(config.train.global_batch_size, run.mesh)
    train_iter = run.data.train_iterator(local_batch, seed=config.seed)
    try:
        if start is not None:
            start, (state, data_state, _) = ckpt.restore_intact(ckpt_lib.abstract(state))
            train_iter.set_state(data_state)
    except BaseException:
        ckpt.close()  # else orbax's event loop prints tracebacks at exit
        raise
    return ckpt, train_iter, state, int(start or 0)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    run, state = _build(config)
    ckpt, train_iter, state, start = _resume(config, workdir, run, state)
    writer = MetricWriter(workdir, restored_step=start)
    preempt = Preemption(start)
    try:
        try:
            state, stopped = _steps(config, run, state, ckpt, train_iter, writer, preempt, start)
        except BaseException as e:
            if isinstance(e, Exception) and distributed.lost_peer(e):
                raise  # unclosed: orbax's close would wait at a barrier for the lost process
            ckpt.close()
            raise
        ckpt.close()
        if stopped is not None:
            return {"preempted_at": stopped}
        preempt.raise_from_now()  # the checkpoint is saved: a SIGTERM now stops the evaluation
        return _final_evaluation(config, run.data, run.graphdef, state, run.frozen, writer)
    except Preempted:
        writer.write_text(
            f"preempted during the final evaluation (step {config.train.num_steps} "
            "is saved; the same command evaluates it)"
        )
        return {"preempted_at": config.train.num_steps}
    finally:
        preempt.restore()
        writer.close()


def _compile(run: _Run, state, batch) -> tuple[Any, float, float]:
    """The train step compiled ahead of time, its FLOPs per device and the compile time (s)."""
    began = time.perf_counter()
    compiled = run.train_step.lower(state, run.frozen, batch, run.text_inputs).compile()
    return compiled, perf.flops(compiled), time.perf_counter() - began


def _steps(
    config, run: _Run, state, ckpt, train_iter, writer, preempt, start
) -> tuple[dict[str, Any], int | None]:
    """Trains from `start` to `train.num_steps`, logging, checkpointing and evaluating on the way.

    Returns:
        The final state, and the step at which a SIGTERM stopped it after saving (else None).
    """
    num_steps, last_saved = config.train.num_steps, start or None
    bar = tqdm(
        total=num_steps,
        initial=start,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    profile = perf.Profile(tuple(config.train.profile_steps), writer.workdir, config.train.profile_process)
    train_step, clock = None, perf.StepClock()
    try:
        for step in range(start + 1, num_steps + 1):
            batch = sharding.to_global(next(train_iter), run.mesh)
            if train_step is None:
                train_step, flops, compile_s = _compile(run, state, batch)
            tracing = profile.before(step)
            state, metrics = train_step(state, run.frozen, batch, run.text_inputs)
            clock.stepped(step, state, tracing + profile.after(step, state))
            bar.update(1)
            is_last = step == num_steps
            preempted = preempt.reached(step)  # read once: the signal may land at any moment
            should_save = step % config.train.checkpoint_every == 0 or is_last or preempted
            if step % config.train.log_every == 0 or should_save:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(host, step, last_saved, config.model.ot)
                ot.warn_if_unconverged(host.get("ot_marginal_error"), f"training step {step}")
                host.update(
                    perf.figures(
                        clock.lap(step),
                        flops,
                        global_batch=config.train.global_batch_size,
                        dtype=config.clip.dtype,
                    )
                )
                if compile_s is not None:  # once, in the first row after compiling
                    host["compile_time_s"], compile_s = compile_s, None
                writer.write(step, host)
                bar.set_postfix(loss=f"{host['loss']:.4f}")
            if should_save:
                writer.flush()  # the rows up to a checkpoint are stored before it
                began = time.perf_counter()
                ckpt.save(step, state, train_iter.get_state(), config)
                last_saved = step
                clock.exclude(time.perf_counter() - began)
            if preempted:
                ckpt.wait()
                who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
                print(f"{who}preempted at step {step}; checkpoint saved", flush=True)
                return state, step
            if config.train.eval_every and step % config.train.eval_every == 0 and not is_last:
                jax.block_until_ready(state)  # the steps before it are step time
                began = time.perf_counter()
                _evaluate(config, run.data, run.graphdef, state, run.frozen, writer, step)
                clock.exclude(time.perf_counter() - began)
    finally:
        profile.stop()  # stopped early (preempted, failed): without waiting on the state
        bar.close()
    return state, None


def _final_evaluation(config, data, graphdef, state, frozen, writer) -> dict[str, Any]:
    """The last evaluation (with the training-free baseline if asked) and `predictions.png`."""
    summary = _evaluate(
        config,
        data,
        graphdef,
        state,
        frozen,
        writer,
        config.train.num_steps,
        baseline=config.eval.training_free_baseline,
    )
    if config.eval.get("figure", True) and jax.process_index() == 0 and jax.process_count() == 1:
        baseline = None
        if config.eval.training_free_baseline:
            clip = functional.merge(graphdef, state["params"], frozen).clip
            baseline = evaluator.training_free_parts(config, clip)
        figure.write_results_figure(
            os.fspath(storage.path(writer.workdir) / "predictions.png"),
            config,
            (graphdef, state["params"], frozen),
            data.source("eval"),
            data.class_names,
            data.unseen,
            baseline_parts=baseline,
        )
    return summary


def _evaluate(
    config, data, graphdef, state, frozen, writer, step, *, baseline: bool = False
) -> dict[str, Any]:
    """Scores the model; with `baseline`, also the training-free templates (same CLIP, images).

    The row written holds the evaluation's wall time, `eval_time_s`.
    """
    began = time.perf_counter()
    summary = evaluator.evaluate(
        config,
        graphdef,
        state["params"],
        frozen,
        data.eval_iterator(),
        data.class_names,
        data.unseen,
        seen_penalty=data.seen_penalty(config),
    )
    if baseline:
        clip = functional.merge(graphdef, state["params"], frozen).clip
        free = evaluator.evaluate_training_free(
            config, clip, data.eval_iterator(), data.class_names, data.unseen
        )
        summary = evaluator.with_training_free(summary, free)
    writer.write(step, {**evaluator.flat_row(summary), "eval_time_s": time.perf_counter() - began})
    evaluator.write_results(writer.workdir, summary, config)
    return summary
