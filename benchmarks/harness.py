"""What `segmenter.py` and `train_step.py` share: the machine line, compile-and-time, model setup.

Run the benchmarks as scripts (`.venv/bin/python benchmarks/segmenter.py`); this module is imported
from the `benchmarks/` folder, which Python puts on the path for a script.

Timing on a shared machine: `measure` compiles ahead of time (`jit(f).lower(*args).compile()`),
reads XLA's temporary buffer size from `memory_analysis()`, then runs the compiled program once and
repeats it only while the runs stay cheap. It reports the best run (interference from other
processes only ever adds time) and the cores the process used during the runs (process CPU seconds
per wall second: 2.0 on an idle 2-core machine, less when it is shared).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections


def machine_line() -> str:
    """Platform, CPU count, load, jax version and the accelerator kind, in one line."""
    devices = jax.devices()
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, jax {jax.__version__}; "
            f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})")


def default_config() -> ml_collections.ConfigDict:
    """`configs/common.py`'s defaults (the repository root is not on the path of a script)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from configs import common  # noqa: PLC0415

    return common.get_config()


class Measured(NamedTuple):
    """compile_s: lower + compile; run_s: best run (nan if not executed); temp_bytes: XLA temp
    buffers; runs: how many runs; cores: process CPU seconds per wall second during the runs;
    output: the first run's output (None if not executed)."""

    compile_s: float
    run_s: float
    temp_bytes: int
    runs: int
    cores: float
    output: Any = None


def temp_bytes(compiled: Any) -> int:
    """`memory_analysis().temp_size_in_bytes` of a compiled program, -1 when unavailable."""
    memory = compiled.memory_analysis()
    return int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1


def measure(fn: Callable, args_fn: Callable[[], Sequence[Any]], *, execute: bool = True,
            repeats: int = 3, cheap_s: float = 3.0, donate_argnums: tuple[int, ...] = ()
            ) -> Measured:
    """Compiles `jax.jit(fn)` for `args_fn()` and times it.

    Args:
      fn: the function to jit.
      args_fn: returns the arguments (called once per run, so donated inputs can be rebuilt;
        arrays or `jax.ShapeDtypeStruct`s when `execute` is False).
      execute: False: compile only (memory without running).
      repeats: most runs; a run slower than `cheap_s` seconds is not repeated.
      cheap_s: see `repeats`.
      donate_argnums: passed to `jax.jit`.
    """
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args_fn()).compile()
    compile_s = time.perf_counter() - start
    temp = temp_bytes(compiled)
    if not execute:
        return Measured(compile_s, float("nan"), temp, 0, float("nan"))
    best, runs, wall, cpu, output = float("inf"), 0, 0.0, 0.0, None
    while runs < repeats:
        args = args_fn()
        cpu0, start = time.process_time(), time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        seconds = time.perf_counter() - start
        cpu += time.process_time() - cpu0
        wall += seconds
        output = result if output is None else output
        best, runs = min(best, seconds), runs + 1
        if seconds > cheap_s:
            break
    return Measured(compile_s, best, temp, runs, cpu / wall, output)


def mib(num_bytes: int) -> str:
    """Bytes as MiB for a table cell ('n/a' when unknown)."""
    return "n/a" if num_bytes < 0 else f"{num_bytes / 2**20:,.0f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def abstract(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of a pytree of arrays (compile without holding the data)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, "sharding", None)),
                        tree)
