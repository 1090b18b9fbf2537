"""What the benchmarks share: the machine line, compile-and-time, the train step's model setup.

Run the benchmarks as scripts (`.venv/bin/python benchmarks/segment.py`); this module is imported
from the `benchmarks/` folder, which Python puts on the path for a script.

Timing on a shared machine: `compare` compiles ahead of time (`jit(f).lower(*args).compile()`),
reads XLA's temporary buffer size from `memory_analysis()`, then runs the compiled programs
round-robin, so a change of load hits the compared functions alike, for a few rounds within a time
budget. It reports each one's best run (interference from other processes only ever adds time) and
the cores the process used during its runs (process CPU seconds per wall second: 2.0 on an idle
2-core machine, less when it is shared).
"""

from __future__ import annotations

import ast
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), e.g. 'Intel(R) Xeon(R) Processor'."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )


def machine_line() -> str:
    """CPU model, CPU count, load, jax version and the accelerator kind, in one line."""
    devices = jax.devices()
    return (
        f"{platform.system()} {cpu_model()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, jax {jax.__version__}; "
        f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})"
    )


def _common():
    """`configs/common.py` (the repository is on the path: see `_repository_on_path`)."""
    from configs import common  # noqa: PLC0415

    return common


def default_config() -> ml_collections.ConfigDict:
    """`configs/common.py`'s defaults."""
    return _common().get_config()


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets the configs' ':smoke' size in place; returns the config.

    As `common.apply_smoke`: tiny random CLIP, 2 layers, 2 prompts, 5 Sinkhorn iterations, ...
    """
    _common().apply_smoke(config)
    return config


def synthetic_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`configs/synthetic.py`'s config (the synthetic world's defaults; `arg` e.g. 'smoke')."""
    from configs import synthetic  # noqa: PLC0415

    return synthetic.get_config(arg)


def _repository_on_path() -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


_repository_on_path()  # this checkout's zegot_jax, not another one installed in the venv


class Measured(NamedTuple):
    """What `compare` and `measure` report of one compiled program.

    Attributes:
        compile_s: lower + compile.
        run_s: best run (nan if not executed).
        temp_bytes: XLA temp buffers.
        runs: how many runs.
        cores: process CPU seconds per wall second during the runs.
        output: the first run's output (None if not executed).
        argument_bytes: the inputs' buffers.
        output_bytes: the outputs' buffers.
        flops: XLA's cost analysis of the program (nan if not reported).
    """

    compile_s: float
    run_s: float
    temp_bytes: int
    runs: int
    cores: float
    output: Any = None
    argument_bytes: int = -1
    output_bytes: int = -1
    flops: float = float("nan")


def memory_bytes(compiled: Any, field: str = "temp") -> int:
    """`memory_analysis().<field>_size_in_bytes` of a compiled program, -1 when unavailable.

    On a sharded program the sizes are per device.
    """
    memory = compiled.memory_analysis()
    return int(getattr(memory, f"{field}_size_in_bytes", -1)) if memory is not None else -1


class Case(NamedTuple):
    """One function to compile and time: `jax.jit(fn, donate_argnums)(*args_fn())`.

    `args_fn` is called once per run, so donated inputs can be rebuilt; it may return
    `jax.ShapeDtypeStruct`s when the case is only compiled.
    """

    fn: Callable
    args_fn: Callable[[], Sequence[Any]]
    donate_argnums: tuple[int, ...] = ()


def quick_compile() -> None:
    """Sets XLA's backend optimisation level to 0 (about half the compile time on a CPU).

    For `--smoke` runs, whose timings mean nothing; call it before the first use of a device.
    """
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()


def free_bytes() -> int:
    """Memory a program may use: the accelerator's limit, or the host's available memory."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def compare(
    cases: dict[str, Case], *, execute: bool = True, rounds: int = 3, budget_s: float = 30.0
) -> dict[str, Measured]:
    """Compiles every case, then runs them round-robin (so load changes hit them alike).

    A case whose compiled temp + argument buffers exceed `free_bytes()` is compiled, not run.

    Args:
        cases: name -> case.
        execute: False: compile only (memory without running).
        rounds: most rounds; no new round starts once the runs took `budget_s` seconds.
        budget_s: see `rounds`.

    Returns:
        name -> `Measured` with the best run of each case (run_s nan when not run).
    """
    from zegot_jax.train import perf  # noqa: PLC0415 (after the repository is on the path)

    compiled, compile_s = {}, {}
    for name, case in cases.items():
        start = time.perf_counter()
        jitted = jax.jit(case.fn, donate_argnums=case.donate_argnums)
        compiled[name] = jitted.lower(*case.args_fn()).compile()
        compile_s[name] = time.perf_counter() - start
    fits = {
        name: memory_bytes(c) + max(memory_bytes(c, "argument"), 0) < free_bytes()
        for name, c in compiled.items()
    }
    best = {name: float("inf" if execute and fits[name] else "nan") for name in cases}
    wall, cpu = dict.fromkeys(cases, 0.0), dict.fromkeys(cases, 0.0)
    runs, outputs, spent = dict.fromkeys(cases, 0), dict.fromkeys(cases), 0.0
    for _ in range(rounds if execute and any(fits.values()) else 0):
        for name, case in cases.items():
            if not fits[name]:
                continue
            args = case.args_fn()
            cpu0, start = time.process_time(), time.perf_counter()
            result = jax.block_until_ready(compiled[name](*args))
            seconds = time.perf_counter() - start
            cpu[name] += time.process_time() - cpu0
            wall[name] += seconds
            spent += seconds
            outputs[name] = result if outputs[name] is None else outputs[name]
            best[name], runs[name] = min(best[name], seconds), runs[name] + 1
        if spent > budget_s:
            break
    return {
        name: Measured(
            compile_s[name],
            best[name],
            memory_bytes(compiled[name]),
            runs[name],
            cpu[name] / wall[name] if runs[name] else float("nan"),
            outputs[name],
            memory_bytes(compiled[name], "argument"),
            memory_bytes(compiled[name], "output"),
            perf.flops(compiled[name]),
        )
        for name in cases
    }


def measure(
    fn: Callable,
    args_fn: Callable[[], Sequence[Any]],
    *,
    execute: bool = True,
    rounds: int = 3,
    budget_s: float = 10.0,
    donate_argnums: tuple[int, ...] = (),
) -> Measured:
    """`compare` for a single function."""
    return compare(
        {"": Case(fn, args_fn, donate_argnums)}, execute=execute, rounds=rounds, budget_s=budget_s
    )[""]


def is_out_of_memory(error: Exception) -> bool:
    """Whether an XLA error is an allocation failure (RESOURCE_EXHAUSTED, out of memory)."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`['model.ot.backward=unrolled', 'clip.dtype=bfloat16']` -> dotted-key overrides.

    Values are Python literals (`True`, `0.1`, `(5, 7, 11)`, `'x'`); anything else is a string.
    Apply them with `zegot_jax.configs.overrides.override`, which rejects unknown fields.
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: write KEY=VALUE, e.g. model.ot.backward=unrolled.")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def mib(num_bytes: int) -> str:
    """Bytes as MiB for a table cell ('n/a' when unknown)."""
    return "n/a" if num_bytes < 0 else f"{num_bytes / 2**20:,.0f}"


def gib(num_bytes: int) -> str:
    """Bytes as GiB for a table cell ('n/a' when unknown)."""
    return "n/a" if num_bytes < 0 else f"{num_bytes / 2**30:.2f}"


def seen_classes(k: int) -> tuple[str, ...]:
    """COCO-Stuff's seen class names (156), or the first K of them."""
    from zegot_jax.data import class_names as names_lib  # noqa: PLC0415

    names, unseen = names_lib.DATASETS["coco_stuff"]
    seen = tuple(n for i, n in enumerate(names) if i not in set(unseen))
    if not 0 < k <= len(seen):
        raise ValueError(f"--classes {k}: use 1..{len(seen)} (COCO-Stuff's seen classes).")
    return seen[:k]


def make_config(variant: str, dtype: str):
    """The default config around a random CLIP of `variant` (layers clipped to small towers)."""
    from zegot_jax import clip as clip_lib  # noqa: PLC0415

    config = default_config()
    config.clip.weights = f"random:{variant}"
    config.clip.dtype = dtype
    depth = clip_lib.get_spec(variant).vision_layers
    if max(config.model.layers) >= depth:
        config.model.layers = tuple(range(depth))[-3:]
    return config


def random_batch(batch: int, size: int, k: int) -> dict[str, np.ndarray]:
    """CLIP-normalised-looking images and labels in [0, K)."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.standard_normal((batch, size, size, 3), np.float32),
        "label": rng.integers(0, k, (batch, size, size)).astype(np.int32),
    }


class Setup:
    """Model, optimizer, step function and text inputs for one configuration.

    The train-step benchmarks' model: `train_step.py`, `step_memory.py`, `accelerator.py`.
    """

    def __init__(self, config, k: int, clip: Any = None):
        from zegot_jax.models import build as build_lib  # noqa: PLC0415
        from zegot_jax.models import functional  # noqa: PLC0415
        from zegot_jax.train import optim  # noqa: PLC0415
        from zegot_jax.train import step as step_lib  # noqa: PLC0415

        self.config = config
        start = time.perf_counter()
        self.model = build_lib.build_model(config, clip)
        self.build_s = time.perf_counter() - start
        self.graphdef, self.params, self.frozen = functional.split_model(self.model)
        self.tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
        self.step = step_lib.make_train_step(self.graphdef, self.tx, schedule, config)
        self.names = seen_classes(k)

    def text_inputs(self, context: int):
        return self.model.text_inputs(self.names, context)

    def state(self):
        """A fresh train state (copies: the step donates it)."""
        from zegot_jax.train import step as step_lib  # noqa: PLC0415

        return step_lib.init_state(jax.tree.map(jax.numpy.copy, self.params), self.tx, self.config.seed)

    def without_ot(self) -> Setup:
        """The same model (same CLIP, same initial parameters) with `model.ot.enabled=False`."""
        return self.with_overrides({"model.ot.enabled": False})

    def with_overrides(self, overrides: dict) -> Setup:
        """The same CLIP and initial parameters under dotted-key config overrides."""
        from zegot_jax.configs.overrides import override  # noqa: PLC0415

        return Setup(override(self.config, overrides), len(self.names), self.model.clip)
