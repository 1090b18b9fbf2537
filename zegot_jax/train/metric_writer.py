"""Metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files, from process 0 only."""

import json
import os
from pathlib import Path
from typing import Any

import jax

from zegot_jax import strict_json


class MetricWriter:
    """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, *, restored_step: int = 0):
        """Appends to `workdir/metrics.jsonl`, first dropping its rows after `restored_step`.

        A resumed run writes them again (a run killed after step 5 and resumed from its step-3
        checkpoint logs steps 4 and 5 once, as the resumed run computed them).
        """
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 (process 0 only)

            path = Path(workdir) / "metrics.jsonl"
            _truncate(path, restored_step)
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            self._file = open(path, "a")  # noqa: SIM115

    def write(self, step: int, row: dict[str, Any]) -> None:
        """Writes `{'step': step, **row}`; numeric entries also go to TensorBoard."""
        if not self.enabled:
            return
        self._file.write(strict_json.dumps({"step": int(step), **row}) + "\n")
        self._file.flush()
        for key, value in row.items():
            if isinstance(value, int | float):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def write_text(self, message: str) -> None:
        """Prints `message` (process 0 only)."""
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        """Closes `metrics.jsonl` and the TensorBoard writer (process 0 only)."""
        if self.enabled:
            self._file.close()
            self._tb.close()


def _truncate(path: Path, last_step: int) -> None:
    """Keeps the rows of `path` up to `last_step` (and drops a line cut short by a kill)."""
    if not path.is_file():
        return
    kept, changed = [], False
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):
            changed = True
            continue
        if isinstance(step, int) and step > last_step:
            changed = True
            continue
        kept.append(line)
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)  # replaces the file (a link itself, never its target)
