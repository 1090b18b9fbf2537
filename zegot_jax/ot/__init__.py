"""MPOT: optimal transport of pixels to text prompts (`mpot`), with pluggable transports.

`mpot.py` is the public function; `registry.py` the transports it can run; `solvers.py` the two
built-in ones (ott-jax Sinkhorn, semi-dual Newton); `implicit.py` the exact implicit backward;
`variants.py` transports from the literature written with the public API below; `reference.py` a
plain loop used as a test oracle and benchmark baseline.

Writing a transport
-------------------
A transport solves ONE problem (one layer, one image, one class) and is registered under a name::

    import jax, jax.numpy as jnp
    import zegot_jax.ot as zot

    @zot.register_transport("row_softmax", options={"temperature": 0.1})
    def row_softmax(problem: zot.Problem, settings: zot.Settings) -> jax.Array:
        m = problem.similarity.shape[0]
        t = settings.options["temperature"]
        return jax.nn.softmax(problem.similarity / t, axis=1) / m   # plan [M, N]

    config.model.ot.solver = "row_softmax"   # training, evaluation, Segmenter, CLI, sliding
    config.model.ot.options.temperature = 0.05   # windows and sharded batches all use it

Contract (`fn(problem, settings) -> plan`):

- `problem.similarity` `[M, N]`: cosines of M pixels to N prompts (float32; float64 in tests);
  `problem.cost` is MPOT's cost `1 - S`. `problem.grid` is the token grid `(h, w)` (pixel `m` at
  `(m // w, m % w)`), None when `mpot` was called without one. `problem.pixels` `[M, D]` and
  `problem.prompts` `[N, D]` are the L2-normalised features `S` came from (None when not given).
  `problem.shared` is what the optional `prepare(similarity [..., M, N], settings)` computed once
  for the whole batch (the built-in Sinkhorn's kernel/log choice).
- `settings`: `epsilon`, `tau` (1 = balanced), `num_iterations`, `threshold`, `domain` from
  `model.ot`, and `options`: `model.ot.options` over the defaults declared at registration (a
  read-only mapping; declaring defaults makes unknown fields fail at launch, and
  `default_options(name)` gives a ConfigDict's worth of fields to override from the command line).
  All are Python values, static under jit.
- Return the plan `[M, N]` (finite, >= 0; its total mass need not be 1), or `(plan,
  diagnostics)` with `diagnostics` a dict of arrays; `'iterations'` (an int) fills
  `MPOTOutput.iterations`, the rest come back stacked in `MPOTOutput.diagnostics`.
- Write it for one problem in jax.numpy (no Python control flow on values): the library vmaps it
  over the leading dimensions (layers, images, classes), casts the inputs to float32, checks the
  plan's shape at trace time and, outside jit, its values, and computes the score
  `M N sum_n T' S` (`T'` = the plan at unit mass; balanced entropic plans as they are), the
  entropy and the marginal error.
- Gradients: autodiff through `fn`. Declare `balanced_entropic=True` only if the plan is entropic
  OT of `problem.cost` with `settings.epsilon` and uniform marginals relaxed by `settings.tau`
  (depending on nothing else): then `backward='implicit'` replaces autodiff by the exact implicit
  backward. `plan_gradient=False` stops gradients at the transport's inputs.
- A run saves `model.ot.solver` (the name) and `model.ot.options` with its config; loading it in a
  process where that name is not registered fails and says which name to register.
"""

from zegot_jax.ot import variants  # noqa: F401 (registers the literature variants)
from zegot_jax.ot.mpot import (
    BACKWARDS,
    MARGINAL_ERROR_WARNING,
    MPOTOutput,
    mpot,
    warn_if_unconverged,
)
from zegot_jax.ot.reference import sinkhorn_log_reference
from zegot_jax.ot.registry import (
    Problem,
    Settings,
    default_options,
    get_transport,
    load_plugins,
    register_transport,
    registered_transports,
    require_registered,
    unregister_transport,
)
from zegot_jax.ot.solvers import DOMAINS

__all__ = [
    "BACKWARDS",
    "DOMAINS",
    "MARGINAL_ERROR_WARNING",
    "MPOTOutput",
    "Problem",
    "Settings",
    "default_options",
    "get_transport",
    "load_plugins",
    "mpot",
    "register_transport",
    "registered_transports",
    "require_registered",
    "sinkhorn_log_reference",
    "unregister_transport",
    "warn_if_unconverged",
]
