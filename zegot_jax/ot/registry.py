"""The transport registry: one function per pixel-to-prompt problem, registered under a name.

`model.ot.solver` names an entry here; `mpot` looks it up at trace time, so a transport registered
in this process (in a notebook cell, in a config file, or in a module that file imports) is used by
training, evaluation, `Segmenter` and the CLI alike. The built-in 'newton' and 'sinkhorn' are
entries like any other (`solvers.py` registers them). See the `zegot_jax.ot` docstring for the
contract.
"""

import importlib
import runpy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import jax


class Problem(NamedTuple):
    """One pixel-to-prompt problem, as a transport sees it (arrays in `mpot`'s dtype, float32).

    Attributes:
        similarity: `S [M, N]`, cosine similarities of M pixels to N prompts.
        grid: `(h, w)` with `h * w == M` (pixel `m` is at row `m // w`, column `m % w`), or None
          when the caller did not give one (`mpot` called on bare similarities).
        pixels: `[M, D]` pixel features (L2-normalised), or None (not given, or a transport declared
          `balanced_entropic`, whose plan depends on the similarity alone).
        prompts: `[N, D]` prompt features (L2-normalised), or None (as for `pixels`).
        shared: what the transport's `prepare` returned for the whole batch (None without one).
    """

    similarity: jax.Array
    grid: tuple[int, int] | None = None
    pixels: jax.Array | None = None
    prompts: jax.Array | None = None
    shared: Any = None

    @property
    def cost(self) -> jax.Array:
        """MPOT's cost `C = 1 - S`, `[M, N]`."""
        return 1.0 - self.similarity


class Settings(NamedTuple):
    """The `model.ot` values a transport may read (Python scalars: static under jit).

    Attributes:
        epsilon: entropic (or other) regularisation strength, > 0.
        tau: marginal relaxation in ott's convention, 1.0 = balanced.
        num_iterations: iteration (Newton: step) budget.
        threshold: 0 = fixed iterations; > 0 = a convergence tolerance (Sinkhorn).
        domain: 'log', 'kernel' or 'auto' (Sinkhorn).
        options: `model.ot.options` over the transport's declared defaults (read-only).
    """

    epsilon: float
    tau: float
    num_iterations: int
    threshold: float = 0.0
    domain: str = "log"
    options: Mapping[str, Any] = MappingProxyType({})


Output = jax.Array | tuple[jax.Array, dict[str, jax.Array]]
Transport = Callable[[Problem, Settings], Output]
Prepare = Callable[[jax.Array, Settings], Any]


class Entry(NamedTuple):
    """A registered transport (see `register_transport`)."""

    name: str
    fn: Transport
    balanced_entropic: bool
    options: Mapping[str, Any] | None
    prepare: Prepare | None
    builtin: bool


_REGISTRY: dict[str, Entry] = {}


def register_transport(
    name: str,
    fn: Transport | None = None,
    *,
    balanced_entropic: bool = False,
    options: Mapping[str, Any] | None = None,
    prepare: Prepare | None = None,
    builtin: bool = False,
):
    """Registers `fn(problem, settings) -> plan [M, N]` (or `(plan, diagnostics)`) as `name`.

    Also a decorator: `@register_transport('mine')`. Registering a name again replaces the entry
    (a notebook cell run twice), except for the built-ins, which cannot be replaced. The function
    is looked up when a program is traced: steps or `Segmenter`s compiled before a replacement
    keep the old one for the shapes they have seen, so build them after registering.

    Args:
        name: what `model.ot.solver` says to use it.
        fn: the transport (see the `zegot_jax.ot` docstring for the contract).
        balanced_entropic: the plan is entropic OT of cost `1 - S` with `settings.epsilon` and
          uniform marginals relaxed by `settings.tau` (1 = balanced), and depends on nothing else;
          then `backward='implicit'` uses the exact implicit backward. Otherwise gradients come
          from autodiff through `fn`.
        options: defaults of the transport's `model.ot.options` fields; when given, any other field
          is refused (typos fail at launch). None accepts any fields.
        prepare: `prepare(similarity [..., M, N], settings)`, run once per `mpot` call on the whole
          batch (no gradient); its result reaches every problem as `problem.shared`.
        builtin: marks the library's own transports (not replaceable).

    Returns:
        `fn` (or, without `fn`, a decorator that registers and returns its argument).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register_transport: name must be a non-empty string, got {name!r}.")
    if fn is None:
        return lambda f: register_transport(
            name, f, balanced_entropic=balanced_entropic, options=options, prepare=prepare, builtin=builtin
        )
    if not callable(fn):
        raise TypeError(f"register_transport({name!r}): fn must be callable, got {type(fn).__name__}.")
    if name in _REGISTRY and _REGISTRY[name].builtin:
        raise ValueError(f"register_transport: {name!r} is a built-in transport; pick another name.")
    defaults = None if options is None else MappingProxyType(dict(options))
    _REGISTRY[name] = Entry(name, fn, bool(balanced_entropic), defaults, prepare, builtin)
    return fn


def unregister_transport(name: str) -> None:
    """Removes a registered (not built-in) transport; unknown names are ignored."""
    if name in _REGISTRY and _REGISTRY[name].builtin:
        raise ValueError(f"unregister_transport: {name!r} is a built-in transport.")
    _REGISTRY.pop(name, None)


def registered_transports() -> tuple[str, ...]:
    """The names `model.ot.solver` accepts in this process, built-ins first."""
    return tuple(sorted(_REGISTRY, key=lambda n: (not _REGISTRY[n].builtin, n)))


def unknown_message(name: Any) -> str:
    """`Unknown OT solver ...` naming the registered transports and how to add one."""
    return (
        f"Unknown OT solver {name!r}; registered: {', '.join(registered_transports())}. "
        f"Register it first: zegot_jax.ot.register_transport({name!r}, fn) (in this process, "
        "e.g. in the config file or a module it imports)."
    )


def get_transport(name: str) -> Entry:
    """The entry registered as `name`; ValueError (one line, the registered names) if none."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(unknown_message(name))
    return _REGISTRY[name]


def require_registered(name: str, what: str) -> None:
    """For loading a saved run: ValueError saying which name to register when `name` is missing.

    Args:
        name: the run's `model.ot.solver`.
        what: the run, as the user named it (e.g. its workdir).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"{what} was trained with model.ot.solver={name!r}, which is not registered in this "
            f"process (registered: {', '.join(registered_transports())}): call "
            f"zegot_jax.ot.register_transport({name!r}, fn) with the same transport (or import "
            "the module that does; zegot-jax segment: --plugin) before loading it."
        )


def resolve_options(entry: Entry, options: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """`options` over the entry's declared defaults, read-only; unknown fields raise ValueError."""
    given = dict(options or {})
    if entry.options is None:
        return MappingProxyType(given)
    unknown = sorted(set(given) - set(entry.options))
    if unknown:
        known = ", ".join(sorted(entry.options)) or "none"
        raise ValueError(
            f"model.ot.options has field(s) {unknown} that transport "
            f"{entry.name!r} does not take; its options: {known}."
        )
    return MappingProxyType({**entry.options, **given})


def default_options(name: str) -> dict[str, Any]:
    """The declared option defaults of a transport (a fresh dict; empty when none declared).

    For configs: `c.model.ot.options = ml_collections.ConfigDict(default_options(name))` makes
    each field overridable from the command line (`--config.model.ot.options.<field>=...`).
    """
    return dict(get_transport(name).options or {})


def load_plugins(plugins: Sequence[str]) -> None:
    """Imports each module name, or runs each `.py` file, in `plugins` (for their registrations).

    The CLI's `--plugin` and the ranking's worker processes use it, so a transport written in a
    file is registered wherever a run that uses it is loaded.

    Raises:
        FileNotFoundError: a `.py` file that does not exist.
        ValueError: a module that cannot be imported.
    """
    for plugin in plugins:
        if plugin.endswith(".py"):
            if not Path(plugin).is_file():
                raise FileNotFoundError(f"--plugin {plugin}: no such file.")
            runpy.run_path(plugin, run_name="zegot_jax_plugin")
            continue
        try:
            importlib.import_module(plugin)
        except ImportError as e:
            raise ValueError(
                f"--plugin {plugin}: cannot import it ({e}); give an importable module name or a .py file."
            ) from e
