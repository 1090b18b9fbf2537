#!/usr/bin/env python3
"""The two Quick-start commands: `python3 dev.py demo` and `python3 dev.py test`.

Each creates `.venv/` beside this file on first use (standard library `venv` + pip only), installs the
project into it (plus the test and demo extras for `test`) at the exact versions of
`requirements-lock.txt`, and re-installs only when pyproject.toml or the lock changes, so both
commands are safe to run again. Extra arguments are passed on: `python3 dev.py test -k ot`,
`python3 dev.py demo --config.train.num_steps=50`.

`test` runs ruff (lint, docstring rules, the formatter's check) and every test, spread over the
cores (pytest-xdist), and prints the 15 slowest.
`test --quick` leaves out the tests marked `slow` (end-to-end runs) for a quick local check; CI and
the README run everything.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
# The tokenizer parity test loads open_clip's tokenizer module alone; the package's other
# dependencies (torchvision) are neither needed nor installable beside torch 2.13 CPU.
NO_DEPS_TEST_PACKAGES = ["open_clip_torch"]
LOCK = ROOT / "requirements-lock.txt"
# Test processes: pytest-xdist workers, each given whole tests as it frees up (the durations are
# uneven: a few end-to-end tests take 10-30 s, most well under 1 s).
PYTEST_ARGS = ["-q", "-n", "auto", "--dist", "worksteal", "--durations=15"]
# `test` installs the demo extra too: tests/test_demo.py drives the page (Gradio) in a browser.
TEST_EXTRAS = "test,demo"


def _run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)


def ensure_env(extra: str | None) -> None:
    """Creates the virtual environment and installs the project when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py may be run by an older python3)
        sys.exit(f"zegot_jax needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    if not PYTHON.exists():
        print(f"Creating a virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extra or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f".[{extra}]" if extra else "."
    pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-c", LOCK]
    _run([*pip, "-e", target])
    if extra == TEST_EXTRAS:
        _run([*pip, "--no-deps", *NO_DEPS_TEST_PACKAGES])
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    """Runs `demo` or `test` and returns its exit status (2, after the usage, for anything else)."""
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        ensure_env(None)
        args = ["train.py", "--config=configs/synthetic.py", "--workdir=runs/synthetic", *rest]
        return subprocess.run([str(PYTHON), *args], cwd=ROOT).returncode
    ensure_env(TEST_EXTRAS)
    if "--quick" in rest:
        rest = [a for a in rest if a != "--quick"] + ["-m", "not slow"]
    # Lint (with the docstring rules) and the formatter's check: `ruff format .` fixes the latter.
    lint = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT).returncode
    lint = lint or subprocess.run([str(BIN / "ruff"), "format", "--check", "."], cwd=ROOT).returncode
    tests = subprocess.run([str(PYTHON), "-m", "pytest", *PYTEST_ARGS, *rest], cwd=ROOT).returncode
    return tests or lint


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
