"""Prompt-map diversity and plan entropy on cases with known answers."""

import jax.numpy as jnp
import numpy as np

from zegot_jax.evaluation import prompt_stats


def test_identical_maps_have_zero_diversity_and_opposite_maps_two():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 5))
    same = np.stack([base, 2 * base + 1, base], -1)
    assert abs(float(prompt_stats.map_diversity(jnp.asarray(same)))) < 1e-5
    opposite = np.stack([base, -base], -1)
    np.testing.assert_allclose(prompt_stats.map_diversity(jnp.asarray(opposite)), 2.0, atol=1e-5)
    independent = rng.normal(size=(3, 64, 64, 4))
    d = np.asarray(prompt_stats.map_diversity(jnp.asarray(independent)))
    assert d.shape == (3,) and np.all(np.abs(d - 1.0) < 0.05)


def test_plan_entropy_is_one_for_uniform_and_zero_for_hard_assignments():
    uniform = jnp.full((2, 4, 4, 3), 1 / 3)
    np.testing.assert_allclose(prompt_stats.plan_entropy(uniform), 1.0, rtol=1e-6)
    hard = jnp.asarray(np.eye(3)[np.random.default_rng(1).integers(0, 3, (2, 4, 4))])
    np.testing.assert_allclose(prompt_stats.plan_entropy(hard), 0.0, atol=1e-6)
