"""Metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files, from process 0 only."""

from pathlib import Path
from typing import Any

import jax

from zegot_jax import strict_json


class MetricWriter:
    """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 (process 0 only)

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
            self._file = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115

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
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
