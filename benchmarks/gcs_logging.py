"""What a log step costs when the run lives in a bucket, against a real GCS server on 127.0.0.1.

TensorBoard: tensorboardX writes a gs:// logdir itself (its GCS writer keeps the whole event file
in memory and uploads all of it at each flush), against events written to a local file that is
uploaded whole after each flush, against a local file alone. metrics.jsonl: replacing the whole
object at each log interval (rows of the size the loop writes, at 100 and 1000 rows), against
writing one object per interval.

The server is tests/gcs_server.py's (fake-gcs-server, filesystem backend): no network latency,
so the figures are the clients' and the server's CPU time on this machine, a floor for a real
bucket, where each request also pays a round trip (tens of milliseconds).

    .venv/bin/python benchmarks/gcs_logging.py            # 1000 log steps: about a minute
    .venv/bin/python benchmarks/gcs_logging.py --smoke    # 20 log steps

Prints Markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import harness

harness._repository_on_path()

from tests import gcs_server  # noqa: E402 (after the repository is on the path)
from zegot_jax import storage  # noqa: E402

SCALARS = 12  # a log row: loss terms, norms, learning rate, step time...


def _row(step: int) -> dict:
    return {"step": step, **{f"metric_{i}": 0.123456789 * (step + i) for i in range(SCALARS)}}


def _tensorboard(kind: str, url: str, steps: int) -> tuple[list[float], int]:
    """Per-step seconds of `SCALARS` scalars + flush (+ upload for 'local+upload'); file bytes."""
    from tensorboardX import SummaryWriter

    local = tempfile.mkdtemp(prefix="tb-")
    writer = SummaryWriter(url if kind == "gs:// direct" else local, flush_secs=3600)
    event_file = writer.file_writer.event_writer._ev_writer._file_name if kind != "gs:// direct" else None
    times = []
    for step in range(steps):
        start = time.perf_counter()
        for key, value in _row(step).items():
            writer.add_scalar(key, value, step)
        writer.flush()
        if kind == "local+upload":
            storage.write_bytes(f"{url}/{os.path.basename(event_file)}", storage.read_bytes(event_file))
        times.append(time.perf_counter() - start)
    writer.close()
    size = os.path.getsize(event_file) if event_file else storage._gcsfs().du(url)
    return times, size


def _metrics(url: str, rows: int, repeats: int) -> tuple[float, int]:
    """Median seconds to replace metrics.jsonl of `rows` rows whole; its size."""
    text = "".join(json.dumps(_row(step)) + "\n" for step in range(rows))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        storage.write_text(f"{url}/metrics.jsonl", text)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="20 log steps, 3 repeats")
    args = parser.parse_args()
    steps, repeats = (20, 3) if args.smoke else (args.steps, 20)
    server = gcs_server.ensure()
    gcs_server.configure_clients(server)
    bucket = server.bucket("zegot-bench")
    storage.write_text(f"{bucket}/warm-up", "")  # the first request opens the connections
    print(harness.machine_line())
    print(f"\nTensorBoard, {steps} log steps of {SCALARS + 1} scalars, each flushed (ms per log step)\n")
    rows = []
    for kind in ("local only", "local+upload", "gs:// direct"):
        times, size = _tensorboard(kind, f"{bucket}/{kind.split()[0].replace(':', '')}", steps)
        tenth = max(1, steps // 10)
        rows.append(
            [
                kind,
                f"{1e3 * statistics.median(times[:tenth]):.2f}",
                f"{1e3 * statistics.median(times[-tenth:]):.2f}",
                f"{1e3 * sum(times) / steps:.2f}",
                f"{size / 1024:.0f} KiB",
            ]
        )
    print(harness.markdown(["writer", "first 10% (median)", "last 10% (median)", "mean", "event file"], rows))
    print(f"\nmetrics.jsonl replaced whole (median of {repeats})\n")
    rows = []
    for n in (1, 100, 1000):
        seconds, size = _metrics(f"{bucket}/metrics-{n}", n, repeats)
        rows.append([n, f"{size / 1024:.1f} KiB", f"{1e3 * seconds:.2f}"])
    print(harness.markdown(["rows", "object", "ms per write"], rows))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
