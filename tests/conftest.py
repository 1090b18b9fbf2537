"""Shared fixtures: small configs, a tiny randomly initialised CLIP, and per-run caches.

One test run (the controller, its pytest-xdist workers and every subprocess they start) shares two
fresh directories, removed when the run ends, so no test depends on an earlier run:
- `$ZEGOT_CACHE`: the synthetic world's small CLIP (pretrained once per run, not once per worker),
  kept out of the user's `~/.cache`;
- JAX's persistent compilation cache: a program compiled by one process (say the ':smoke' train
  step) is read back by the next process that compiles the same program, which then only traces.

Test programs are tiny and compiled once each, so compiling is most of the suite's time: XLA's CPU
backend compiles them without LLVM optimisation and with its older loop emitters instead of the
fusion emitters (`TEST_XLA_FLAGS`, inherited by subprocesses and notebook kernels; a ':smoke'
training run from nothing took 27.7 s, 19.3 s with the first flag, 14.3 s with both: single runs
on the shared box at load 3-9). Both change how fast the machine code runs, not the program (XLA's
HLO passes, fusion included, still run); the tests' tolerances cover rounding differences.
Benchmarks and users compile at the default level.
"""

import os
import shutil
import tempfile

import jax
import pytest
from flax import nnx
from gcs_server import gcs  # noqa: F401 (the run's one GCS server, a session fixture)

from configs import common
from zegot_jax import clip as clip_lib

_RUN_DIR = "ZEGOT_TEST_RUN_DIR"
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
# JAX reads these at import, so subprocesses (train.py, notebooks, benchmarks) inherit the cache.
_JAX_CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def pytest_configure(config):
    """Creates the run's shared directories in the controller; workers inherit the environment."""
    if os.environ.get(_RUN_DIR) is None:  # the controller (workers are started after this)
        run_dir = tempfile.mkdtemp(prefix="zegot-jax-tests-")
        config._zegot_run_dir = run_dir  # removed by the process that made it
        os.environ[_RUN_DIR] = run_dir
        os.environ["ZEGOT_CACHE"] = os.path.join(run_dir, "zegot_cache")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(run_dir, "jax_cache")
        os.environ.update(_JAX_CACHE_ENV)
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
    # This process imported jax before the environment was set: tell it directly.
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(config, items):
    """Runs the `slow` end-to-end tests first.

    That way xdist's workers do not end on one of them while the other idles (the order is the same
    in every worker, as xdist requires).
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config):
    run_dir = getattr(config, "_zegot_run_dir", None)
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


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
