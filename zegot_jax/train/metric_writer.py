"""Metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files, from process 0 only.

A local workdir gets its rows appended as they come. On object storage (`gs://`), where an object
is written whole and cannot be appended to, process 0 keeps the log in memory and replaces the
`metrics.jsonl` object whole, and writes TensorBoard's events to a local folder whose files it
uploads into `workdir/tensorboard/`. GCS allows about one write per second to one object, so
uploads happen at most every `UPLOAD_EVERY_S` seconds, and always before a checkpoint is saved
(`flush`) and at the end (`close`): every row up to a saved step is in the bucket. Measured against
a local GCS server, replacing a 1,000-row log cost 6-11 ms and uploading the events file 18-20 ms
per log step (BENCHMARKS.md, "Logging to a bucket").
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from zegot_jax import storage, strict_json

UPLOAD_EVERY_S = 2.0
METRICS, TENSORBOARD = "metrics.jsonl", "tensorboard"


class MetricWriter:
    """Writes one JSON object per logged step and mirrors scalars to TensorBoard.

    Args:
        workdir: the run's folder, local or `gs://`.
        restored_step: the step the run resumed from; rows after it are dropped first, since a
            resumed run writes them again (a run killed after step 5 and resumed from its step-3
            checkpoint logs steps 4 and 5 once, as the resumed run computed them).
    """

    def __init__(self, workdir: str, *, restored_step: int = 0):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        self.remote = storage.is_remote(workdir)
        self._tb = None
        self._uploaded = -float("inf")
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # noqa: PLC0415 (process 0 only)

        path = storage.path(workdir) / METRICS
        logged = storage.read_text(path) if storage.exists(path) else ""
        rows = _rows_up_to(logged, restored_step)
        if self.remote:
            self._rows = rows
            self._events = tempfile.mkdtemp(prefix="zegot-tensorboard-")
            self._tb = SummaryWriter(self._events)
            self._upload(force=True)
        else:
            storage.check_no_links(path, workdir)  # nothing written outside the run
            if rows != logged.splitlines() or os.path.islink(path):  # a link is replaced
                storage.write_text(path, "".join(f"{row}\n" for row in rows), root=workdir)
            self._tb = SummaryWriter(str(Path(workdir) / TENSORBOARD))
            self._file = open(path, "a")  # noqa: SIM115

    def write(self, step: int, row: dict[str, Any]) -> None:
        """Writes `{'step': step, **row}`; numeric entries also go to TensorBoard."""
        if not self.enabled:
            return
        line = strict_json.dumps({"step": int(step), **row})
        for key, value in row.items():
            if isinstance(value, int | float):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()
        if self.remote:
            self._rows.append(line)
            self._upload()
        else:
            self._file.write(line + "\n")
            self._file.flush()

    def flush(self) -> None:
        """Stores every row written so far (the bucket's copy too, however recent the last)."""
        if self.enabled and self.remote:
            self._upload(force=True)

    def _upload(self, *, force: bool = False) -> None:
        """Replaces the bucket's log and events files (at most every `UPLOAD_EVERY_S`)."""
        if not force and time.monotonic() - self._uploaded < UPLOAD_EVERY_S:
            return
        root = storage.path(self.workdir)
        storage.write_text(root / METRICS, "".join(f"{row}\n" for row in self._rows))
        for name in sorted(os.listdir(self._events)):
            storage.write_bytes(root / TENSORBOARD / name, Path(self._events, name).read_bytes())
        self._uploaded = time.monotonic()

    def write_text(self, message: str) -> None:
        """Prints a status line (process 0 only)."""
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        """Closes the log and the events file, storing what is not stored yet."""
        if not self.enabled:
            return
        self._tb.close()
        if self.remote:
            self._upload(force=True)
            shutil.rmtree(self._events, ignore_errors=True)
        else:
            self._file.close()


def _rows_up_to(text: str, last_step: int) -> list[str]:
    """The rows of a log up to `last_step` (a line cut short by a kill is dropped)."""
    kept = []
    for line in text.splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int) and step > last_step:
            continue
        kept.append(line)
    return kept
