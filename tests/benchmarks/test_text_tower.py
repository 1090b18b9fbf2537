"""`benchmarks/text_tower.py --smoke`: runs, prints its tables, and the compared cases agree."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _rows(output: str, columns: int) -> dict[str, list[str]]:
    """Markdown rows with `columns` cells, by their first cell."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == columns:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_smoke_mode_prints_memory_times_and_agreement():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    result = subprocess.run(
        [sys.executable, "benchmarks/text_tower.py", "--smoke", "--time-remat"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "load average" in out and "(load " in out
    cases = ["full", "prefix-shared", "full, remat", "prefix-shared, remat"]
    memory, summary = _rows(out, 7), _rows(out, 8)
    assert set(cases) <= set(memory) and set(cases) <= set(summary)
    for case in cases:
        features_diff, gradient_diff = (float(x) for x in summary[case][-2:])
        assert features_diff < 1e-5 and gradient_diff < 1e-5
