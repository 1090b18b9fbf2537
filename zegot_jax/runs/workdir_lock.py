"""One training per workdir: an OS lock (`fcntl.flock`) on `workdir/train.lock`, held for the run.

The OS lock is what excludes: it is taken atomically and released by the kernel when the holder
exits however it exits (SIGKILL, a crash), so a lock is never stale on this host and two starts
can never both take it. The file also describes the holder (pid, host, start time) for the message
a second training gets; that text is informational only: an empty or unreadable description (a
full disk) or one naming a live but unrelated pid (reused after a reboot) blocks nothing.

A description from another host, found without an OS lock held, is refused with the command that
clears it (some network filesystems do not share locks between hosts). Remote workdirs
(`gs://...`) are not locked.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

LOCK_NAME = "train.lock"


class Held(NamedTuple):
    """A taken lock: the open file that carries the OS lock, and its path."""

    fd: int
    path: Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not isinstance(holder.get("pid"), int):
        return "its holder did not describe itself"
    return f"pid {holder['pid']} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _busy(workdir: str, path: Path, holder: dict) -> ValueError:
    pid = holder.get("pid")
    if isinstance(pid, int) and holder.get("host") == socket.gethostname() and _alive(pid):
        fix = f"wait for it to finish or stop it (kill {pid}), or pick another --workdir."
    else:  # the named process is gone or unknown: a child that inherited the lock may hold it
        fix = f"find the process that holds it with `fuser -v {path}` and stop it, or pick another --workdir."
    return ValueError(f"{workdir} is in use by another training ({_describe(holder)}); {fix}")


def _write(fd: int, path: Path) -> None:
    """Writes this process's description; a failure (full disk) is a note, the lock still holds."""
    text = json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    ).encode()
    try:
        os.ftruncate(fd, 0)
        if os.write(fd, text) != len(text):
            raise OSError(errno.ENOSPC, "short write")
    except OSError as e:
        print(
            f"note: could not write who holds {path} ({e.strerror}); the lock holds anyway.",
            file=sys.stderr,
            flush=True,
        )


def _open_locked(workdir: str, path: Path) -> int | None:
    """Opens `path` and takes its OS lock; None if the file was replaced meanwhile (retry).

    Raises:
        ValueError: another process holds the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise _busy(workdir, path, holder) from None
    except OSError as e:  # a filesystem without locks
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        print(
            f"note: {path} cannot be locked on this filesystem ({e.strerror}); make sure only "
            "one training uses this workdir.",
            file=sys.stderr,
            flush=True,
        )
    try:
        same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:  # its holder released (removed) it between our open and lock
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def acquire(workdir: str) -> Held | None:
    """Takes the lock of `workdir` (which must exist) for this process (None: not lockable).

    Raises:
        ValueError: another process holds it, or a description from another host is there.
    """
    if "://" in workdir:
        return None
    path = Path(workdir) / LOCK_NAME
    for _ in range(10):  # a lock file removed between our open and our lock is simply retried
        try:
            fd = _open_locked(workdir, path)
        except OSError as e:  # a link or a folder named train.lock, an unwritable workdir
            raise ValueError(
                f"Cannot lock {workdir}: {path} ({e.strerror}); remove it or pick another --workdir."
            ) from e
        if fd is not None:
            break
    else:
        raise ValueError(f"Could not take the lock {path}: other processes keep replacing it.")
    holder = _read(fd)
    if isinstance(holder.get("pid"), int) and holder.get("host") not in (None, socket.gethostname()):
        os.close(fd)
        raise ValueError(
            f"{workdir} may be in use by a training on another host "
            f"({_describe(holder)}); wait for it, or if it is gone, delete {path} "
            "and start again."
        )
    if isinstance(holder.get("pid"), int) and holder["pid"] != os.getpid():
        print(
            f"note: taking over the lock of {workdir} left by a process that no longer holds "
            f"it ({_describe(holder)}).",
            file=sys.stderr,
            flush=True,
        )
    _write(fd, path)
    return Held(fd, path)


def release(held: Held | None) -> None:
    """Removes the lock file and drops the OS lock.

    In that order, so no one locks a removed file without noticing: `acquire` checks that the file
    it locked is still the one at the path.
    """
    if held is None:
        return
    with contextlib.suppress(OSError):
        if os.stat(held.path, follow_symlinks=False).st_ino == os.fstat(held.fd).st_ino:
            held.path.unlink()
    os.close(held.fd)


@contextlib.contextmanager
def hold(workdir: str, *, enabled: bool = True) -> Iterator[None]:
    """Holds the lock of `workdir` for the duration of the block (nothing when not `enabled`)."""
    held = acquire(workdir) if enabled else None
    try:
        yield
    finally:
        release(held)
