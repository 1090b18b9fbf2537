"""Notebooks are stored without outputs and run top to bottom, as a user would run them.

They run from an empty directory, on the project installed from its wheel (as in Colab), at test
size.

The wheel is built from this checkout's files and installed (`--no-deps`) into a fresh virtual
environment that sees the already installed dependencies through a `.pth` line but not this
checkout nor its editable install, so a notebook importing anything the wheel lacks (`configs/`,
say) fails here. The notebooks' first cell, which installs the project where it is missing, is run
alone in another such venv with the wheel as its source.
"""

import json
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["quickstart", "ot_playground"]
FIGURES = {"quickstart": 7, "ot_playground": 1}  # figures each notebook shows
# Markdown tables each notebook shows: lines after the first (the tour: separator + 6 variants;
# the ranking at one seed: separator + 2 candidates, then the paired table's 1-seed note).
TABLE_ROWS = {"quickstart": [], "ot_playground": [6, 4]}
KERNEL = "zegot-wheel-python"


def _run(*args: str | Path) -> None:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"


def _fresh_venv(venv: Path) -> Path:
    """A venv without zegot_jax that sees this interpreter's installed packages; its python.

    The site directories are plain paths after the venv's own: their .pth files (the editable
    install's finder among them) are not run, so this checkout is not importable from it.
    """
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    dependencies = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if Path(p).is_dir()]
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "zegot_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """This checkout's wheel."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: the build writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "zegot_jax", source / "zegot_jax", ignore=shutil.ignore_patterns("__pycache__"))
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        root / "dist",
        source,
    )
    (built,) = (root / "dist").glob("zegot_jax-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_python(wheel, tmp_path_factory) -> Path:
    """The python of a fresh venv whose only zegot_jax is this checkout's wheel."""
    python = _fresh_venv(tmp_path_factory.mktemp("venv") / "venv")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    return python


@pytest.fixture
def kernel(wheel_python, tmp_path, monkeypatch):
    """A kernel spec for the wheel's venv, in an environment that does not see this checkout."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(wheel_python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "zegot_jax wheel",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("ZEGOT_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("ZEGOT_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return KERNEL


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert 'find_spec("zegot_jax")' in code[0].source, "the first cell installs the project"


def test_the_first_cell_installs_the_project_when_it_is_missing(wheel, tmp_path, monkeypatch):
    cells = [nbformat.read(NOTEBOOKS / f"{n}.ipynb", as_version=4).cells[1].source for n in NAMES]
    assert len(set(cells)) == 1, "the notebooks install the project the same way"
    python = _fresh_venv(tmp_path / "venv")
    cell, count = re.subn(
        r'^ZEGOT_JAX_SOURCE = ".*"$', f"ZEGOT_JAX_SOURCE = {str(wheel)!r}", cells[0], flags=re.MULTILINE
    )
    assert count == 1
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the dependencies are installed: nothing to download
    done = subprocess.run([python, "-c", cell], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"zegot_jax from {tmp_path / 'venv'}" in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_from_the_wheel_in_an_empty_directory(name, kernel, wheel_python, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(empty)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    installed = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert f"zegot_jax from {wheel_python.parents[1]}" in installed, installed
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == FIGURES[name]
    tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert [t.count("\n| ") for t in tables] == TABLE_ROWS[name]  # a row per variant
    if name == "ot_playground":
        assert "\n| smooth Sinkhorn (yours) | 1 |" in tables[1], tables[1]
    assert (tmp_path / "runs").is_dir()  # the runs went where the test said
    assert not list((tmp_path / "runs").rglob("predictions.png"))  # eval.figure=False
    assert not list(empty.iterdir())  # nothing written where the notebook was opened
