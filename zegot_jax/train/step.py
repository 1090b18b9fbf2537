"""The train step: the loss of `zegot_jax.models.losses.make_loss_fn`, its gradient, AdamW update.

The step is a pure function of `(state, frozen, batch, text_inputs)`; `state` holds the trainable
parameters, the optimizer state, the step and the RNG key and is donated. Gradients are taken with
respect to `state['params']` only, so CLIP's weights are never differentiated or updated.
"""

from collections.abc import Callable, Collection, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from zegot_jax.models.losses import make_loss_fn


def init_state(params: Any, tx: optax.GradientTransformation, seed: int) -> dict[str, Any]:
    """The train state: step, trainable params, optimizer state, RNG key."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def make_train_step(
    graphdef: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    *,
    pseudo_label_ids: Sequence[int] = (),
) -> Callable:
    """Returns `step(state, frozen, batch, text_inputs) -> (state, metrics)` (not yet jitted).

    Args:
        graphdef: the model graph from `split_model`.
        tx: the optimiser.
        schedule: its learning rate (for logging).
        config: the experiment config (reads `loss` and `model.text_consistency_weight`).
        pseudo_label_ids: unseen class ids to pseudo-label (transductive training), else empty.
    """
    loss_fn = make_loss_fn(graphdef, config, pseudo_label_ids=pseudo_label_ids)

    def step(state, frozen, batch, text_inputs):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], frozen, batch, text_inputs, key
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            "focal": aux["focal"],
            "dice": aux["dice"],
            **{k: aux[k] for k in ("text_consistency", "ot_marginal_error") if k in aux},
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": schedule(state["step"]),
        }
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}
        return new_state, metrics

    return step


def divergence_fix(bad: Collection[str], ot_config: ml_collections.ConfigDict) -> str:
    """What to change when the metrics named in `bad` became NaN or Inf."""
    if ot_config.enabled and (
        "ot_marginal_error" in bad or ("grad_norm" in bad and "loss" not in bad)
    ):  # the OT failed, or the loss's gradient
        return (
            f"The OT is the likely cause: at model.ot.epsilon={ot_config.epsilon} its plans "
            "are nearly hard assignments, whose gradient is not finite; raise "
            "model.ot.epsilon (OTSeg uses 0.05), or else lower optim.learning_rate."
        )
    return "Lower optim.learning_rate or check the data."
