"""Notebooks are stored without outputs and run top to bottom (at test size) in a real kernel."""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["quickstart", "ot_playground"]
FIGURES = {"quickstart": 7, "ot_playground": 2}  # figures each notebook shows
KERNEL = "zegot-test-python"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec for this interpreter (not whatever 'python3' a machine has registered)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "zegot_jax tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
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


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_top_to_bottom(name, kernel, tmp_path):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name=kernel,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == FIGURES[name]
    if name == "ot_playground":
        tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
        assert len(tables) == 1 and tables[0].count("\n| ") == 2  # one row per smoke variant
    assert (tmp_path / "runs").is_dir()  # the runs went where the test said
