"""One training per gs:// workdir: the object `workdir/train.lock`, created only if absent.

The same shape as the local lock (`train/workdir_lock.py`): `acquire(workdir)`, `release(held)`
and `hold(workdir, enabled=...)`, so a caller picks the module by `storage.is_remote(workdir)`.

GCS has no OS lock and nothing that notices a holder die, so exclusion rests on generation
preconditions (google-cloud-storage's `if_generation_match`): the lock is created with
`if_generation_match=0` (of two creates, exactly one succeeds; the other gets 412), and every later
write or delete names the generation this holder last wrote, so a holder that lost the lock finds
out instead of overwriting the new holder. The object describes its holder (host, pid, start time,
a heartbeat count); a daemon thread rewrites it every `HEARTBEAT_S` seconds, through compiles,
evaluations and checkpoint waits alike. A killed training never releases its lock: a lock whose
holder ran on this host and has ended is taken over at once, and one whose object was last written
more than `STALE_AFTER_S` ago (a preempted or lost VM) may be taken over, each with a note; the
takeover is conditioned on the stale generation too (of two trainings taking over, one wins).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator

from zegot_jax import storage

LOCK_NAME = "train.lock"
HEARTBEAT_S = 60.0
# Ten missed heartbeats. Age is the object's `updated` time (the bucket's clock) against this
# host's clock, so NTP-level skew (well under a second on Cloud VMs) and a slow request or two are
# far from it; a preempted pod can resume its run 10 minutes after its last heartbeat, about the
# time a TPU VM takes to come back anyway. Not a config field: every host of every training on
# a bucket must agree on it.
STALE_AFTER_S = 600.0


def _describe(holder: dict) -> str:
    if not isinstance(holder.get("pid"), int):
        return "its holder did not describe itself"
    return f"pid {holder['pid']} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _holder_of(blob) -> dict:
    try:
        holder = json.loads(blob.download_as_bytes(if_generation_match=blob.generation))
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


class Held:
    """A taken lock: renewed by a background thread until `release`d."""

    def __init__(self, workdir: str, blob, heartbeat_s: float):
        self.workdir = workdir
        self._blob = blob
        self._token = secrets.token_hex(8)  # tells this holder's writes from anyone else's
        self._beats = 0
        self._started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.generation: int | None = None
        self.lost: ValueError | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat_s = heartbeat_s
        self._thread = threading.Thread(target=self._beat, name=f"lock {workdir}", daemon=True)

    def describe(self) -> dict:
        """What the lock object says of its holder: pid, host, start, token, heartbeats."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self._started,
            "token": self._token,
            "beats": self._beats,
        }

    def _write(self, if_generation_match: int) -> None:
        """Writes the description, conditioned on `if_generation_match` (0: create)."""
        self._blob.upload_from_string(
            json.dumps(self.describe()),
            content_type="application/json",
            if_generation_match=if_generation_match,
        )
        self.generation = self._blob.generation

    def renew(self) -> None:
        """Rewrites the heartbeat over the generation this holder wrote last.

        Raises:
          ValueError: another training took the lock over (this one must stop writing).
        """
        from google.api_core import exceptions  # noqa: PLC0415 (gs:// only)

        with self._mutex:
            if self.lost:
                raise self.lost
            self._beats += 1
            try:
                self._write(self.generation)
            except exceptions.PreconditionFailed:
                if not self._written_by_me():
                    self.lost = ValueError(
                        f"Lost the lock of {self.workdir} to another training "
                        f"({_describe(self._current())}), which took it over after this one's "
                        f"heartbeat was over {STALE_AFTER_S / 60:.0f} min old; stop this training."
                    )
                    raise self.lost from None

    def _current(self) -> dict:
        with contextlib.suppress(Exception):  # only to name the new holder
            if (blob := self._blob.bucket.get_blob(self._blob.name)) is not None:
                return _holder_of(blob)
        return {}

    def _written_by_me(self) -> bool:
        """After a 412: whether the object is this holder's latest write all the same.

        That is a retried request whose first attempt had landed; if so, its generation is taken
        as ours.
        """
        blob = self._blob.bucket.get_blob(self._blob.name)
        if blob is None:
            return False
        holder = _holder_of(blob)
        if holder.get("token") == self._token and holder.get("beats") == self._beats:
            self.generation = blob.generation
            return True
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                self.renew()
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                return
            except Exception as e:  # a transient failure: the next beat tries again
                print(
                    f"note: could not renew the lock of {self.workdir} ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]}); retrying in {self._heartbeat_s:.0f} s.",
                    file=sys.stderr,
                    flush=True,
                )

    def check(self) -> None:
        """Raises the ValueError of a lock lost to another training (for the loop's log steps)."""
        if self.lost:
            raise self.lost

    def release(self) -> None:
        """Stops the heartbeat and deletes the lock object if it is still this holder's."""
        from google.api_core import exceptions  # noqa: PLC0415 (gs:// only)

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._mutex:
            if self.lost or self.generation is None:
                return
            with contextlib.suppress(exceptions.PreconditionFailed, exceptions.NotFound):
                current = self._blob.bucket.get_blob(self._blob.name)
                if current is not None and current.generation == self.generation:
                    # The precondition is what protects a lock taken over since that look (the
                    # look alone protects on servers that ignore it: fake-gcs-server does).
                    self._blob.delete(if_generation_match=self.generation)


def _died_here(holder: dict) -> bool:
    """Whether the lock's holder ran on this host and its process has ended.

    A SIGKILL or a crash never releases the lock; the same command then resumes at once.
    """
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _age_s(blob) -> float:
    return (datetime.datetime.now(datetime.UTC) - blob.updated).total_seconds()


def acquire(workdir: str, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> Held:
    """Takes the lock of gs:// `workdir` for this process and starts its heartbeat.

    Raises:
      ValueError: another training holds it (named), or the bucket refused (credentials,
        permissions: one line); FileNotFoundError: the bucket does not exist.
      MissingDependency: google-cloud-storage is not installed.
    """
    lock = f"{storage.path(workdir).as_posix().rstrip('/')}/{LOCK_NAME}"
    storage.require_gcs(lock)
    from google.api_core import exceptions  # noqa: PLC0415 (gs:// only)
    from google.cloud import storage as gcs  # noqa: PLC0415

    with storage.gcs_errors(lock):
        client = gcs.Client(project=None)  # objects only: no project needed
        name = lock.removeprefix("gs://").split("/", 1)[1]
        bucket = client.bucket(storage.bucket(lock))
        held = Held(workdir, bucket.blob(name), heartbeat_s)
        for _ in range(5):  # each pass ends in a decision unless another start raced us
            current = bucket.get_blob(name)
            try:
                if current is None:
                    held._write(if_generation_match=0)
                    break
                holder = _holder_of(current)
                gone = _died_here(holder)
                if (age := _age_s(current)) <= stale_after_s and not gone:
                    raise ValueError(
                        f"{workdir} is in use by another training ({_describe(holder)}, "
                        f"heartbeat {age:.0f} s ago); wait for it to finish or stop it, or pick "
                        f"another --workdir (a lock not renewed for {stale_after_s / 60:g} min "
                        "is taken over)."
                    )
                held._write(if_generation_match=current.generation)
                why = (
                    "is no longer running on this host" if gone else f"last renewed it {age / 60:.0f} min ago"
                )
                print(
                    f"note: taking over the lock of {workdir}: its holder ({_describe(holder)}) {why}.",
                    file=sys.stderr,
                    flush=True,
                )
                break
            except exceptions.NotFound as e:
                if (missing := storage.explain(e, lock)) is not e:
                    raise missing from e  # the bucket
                continue  # released meanwhile: look again
            except exceptions.PreconditionFailed:
                continue  # created, renewed or taken over meanwhile: look again
        else:
            raise ValueError(f"Could not take the lock {lock}: other trainings keep changing it.")
    held._thread.start()
    return held


def release(held: Held | None) -> None:
    """Releases a lock taken by `acquire` (nothing for None)."""
    if held is not None:
        held.release()


@contextlib.contextmanager
def hold(workdir: str, *, enabled: bool = True) -> Iterator[Held | None]:
    """Holds the lock of gs:// `workdir` for the duration of the block.

    Nothing is taken when not `enabled` (processes other than 0).
    """
    held = acquire(workdir) if enabled else None
    try:
        yield held
    finally:
        release(held)
