"""Shared fixtures: small configs and a tiny randomly initialised CLIP."""

import pytest
from flax import nnx

from configs import common
from zegot_jax import clip as clip_lib


@pytest.fixture
def smoke_config():
    """The common defaults shrunk to the ':smoke' size (tiny CLIP, 2 layers, 2 prompts)."""
    c = common.get_config()
    c.data.name = "voc"
    common.apply_smoke(c)
    return c


@pytest.fixture(scope="session")
def tiny_clip():
    """A randomly initialised 'tiny' CLIP (shared; never mutated by the tests)."""
    return clip_lib.CLIP(clip_lib.get_spec("tiny"), rngs=nnx.Rngs(0))
