"""The optimiser's learning-rate schedule (`zegot_jax.train.optim`)."""

import ml_collections
import numpy as np

from zegot_jax.train import optim


def test_poly_schedule_with_linear_warmup():
    cfg = ml_collections.ConfigDict(
        dict(learning_rate=2e-4, min_learning_rate=1e-6, warmup_steps=1500, poly_power=0.9)
    )
    schedule = optim.learning_rate_schedule(cfg, 20_000)
    np.testing.assert_allclose(float(schedule(0)), 2e-4 * 1e-6, rtol=0.05)  # warm-up ratio 1e-6
    poly = lambda t: (2e-4 - 1e-6) * (1 - t / 20_000) ** 0.9 + 1e-6  # noqa: E731
    np.testing.assert_allclose(float(schedule(1500)), poly(1500), rtol=1e-5)
    np.testing.assert_allclose(float(schedule(750)), poly(750) * (1 - 0.5 * (1 - 1e-6)), rtol=1e-5)
    np.testing.assert_allclose(float(schedule(20_000)), 1e-6, rtol=1e-5)
