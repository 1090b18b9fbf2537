"""One training per workdir: `workdir/train.lock` names the process that holds it.

The lock file holds the holder's pid, host and start time. A second training on the same workdir
is refused with a message naming that process. A lock left by a process that died on this host
(SIGKILL, a crash) is taken over with a note; one from another host cannot be checked and is
refused with the command that removes it. Remote workdirs (`gs://...`) are not locked.
"""

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "train.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _create(path: Path) -> bool:
    """Creates the lock file atomically; False if it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
    return True


def acquire(workdir: str) -> Path | None:
    """Takes the lock of `workdir` (which must exist); returns its path (None: not lockable).

    Raises:
      ValueError: another live process holds it, or a process on another host does.
    """
    if "://" in workdir:
        return None
    path = Path(workdir) / LOCK_NAME
    for _ in range(3):  # a lock removed between our attempts is simply retried
        if _create(path):
            return path
        holder = _read(path)
        pid, host = holder.get("pid"), holder.get("host", "?")
        who = f"pid {pid} on host {host}, started {holder.get('started', '?')}"
        if host != socket.gethostname():
            raise ValueError(f"{workdir} is in use by another training ({who}); wait for it, or "
                             f"if it is gone, delete {path} and start again.")
        if isinstance(pid, int) and _alive(pid):
            raise ValueError(f"{workdir} is in use by another training ({who}); wait for it to "
                             "finish or stop it, or pick another --workdir.")
        print(f"note: taking over the lock of {workdir} left by a process that is gone ({who}).",
              file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
    raise ValueError(f"Could not take the lock {path}: other processes keep creating it.")


def release(path: Path | None) -> None:
    """Removes the lock if this process still holds it."""
    if path is not None and _read(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(workdir: str, *, enabled: bool = True) -> Iterator[None]:
    """Holds the lock of `workdir` for the duration of the block (nothing when not `enabled`)."""
    path = acquire(workdir) if enabled else None
    try:
        yield
    finally:
        release(path)
