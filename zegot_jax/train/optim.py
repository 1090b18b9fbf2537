"""AdamW with mmseg's poly schedule and linear warm-up (as OTSeg trains, see README)."""

import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Poly decay `(lr - min) * (1 - t/T)^p + min`, times a linear warm-up factor.

    The warm-up factor rises linearly from 1e-6 to 1 over `warmup_steps` (mmseg's 'linear' warm-up
    with ratio 1e-6), applied on top of the poly value at the same step.
    """
    lr, min_lr = config.learning_rate, config.min_learning_rate
    warmup, power = config.warmup_steps, config.poly_power
    total = max(num_steps, 1)

    def schedule(step):
        t = jnp.minimum(step, total).astype(jnp.float32)
        poly = (lr - min_lr) * (1.0 - t / total) ** power + min_lr
        if warmup <= 0:
            return poly
        ratio = 1e-6
        factor = 1.0 - (1.0 - jnp.minimum(t, warmup) / warmup) * (1.0 - ratio)
        return poly * factor

    return schedule


def make_optimizer(
    config: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser for the trainable parameters and its learning-rate schedule."""
    schedule = learning_rate_schedule(config, num_steps)
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    return optax.chain(*parts), schedule
