"""Shared fixtures: small configs and a tiny randomly initialised CLIP."""

import os

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


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Keeps the synthetic CLIP cache of the tests out of the user's ~/.cache (subprocesses too)."""
    previous = os.environ.get("ZEGOT_CACHE")
    os.environ["ZEGOT_CACHE"] = str(tmp_path_factory.mktemp("zegot_cache"))
    yield
    if previous is None:
        os.environ.pop("ZEGOT_CACHE", None)
    else:
        os.environ["ZEGOT_CACHE"] = previous
