"""Reading back the Markdown tables that the benchmark scripts print."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python benchmarks/<name> args...` on the CPU, importing this checkout's package."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in `text`, as rows of {header: cell}."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and set("".join(block[1])) <= set("-"):
            header = block[0]
            found.append([dict(zip(header, row, strict=True)) for row in block[2:]])
        block = []
    return found
