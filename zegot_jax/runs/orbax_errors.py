"""Orbax and tensorstore failures as one line: what went wrong, not a screen of tracebacks.

- A failed read: when one array of a checkpoint is unreadable, orbax stops waiting for the
  others and closes its event loop; tensorstore then completes them on its own threads, and each
  completion prints a `RuntimeError: Event loop is closed` traceback (8 to 14 of them before the
  error line). They say nothing the error does not. `quiet_after_failure` wraps `sys.stderr`
  from then on and drops exactly those tracebacks; every other write passes through.
- A failed asynchronous save (a full disk): orbax logs the failure with its traceback from each
  background thread (5 tracebacks, 300 lines) before the main thread sees it.
  `quiet_background_errors` drops those log records: the same error reaches the main thread,
  where `write_error` turns a full disk into one line.
- Restoring into a model of other shapes (`train.init_from` from another model size):
  `other_shapes` recognises it, so it is not reported as a damaged file.
"""

import logging
import re
import sys
import threading
from typing import TextIO

_NOISE = "RuntimeError: Event loop is closed"
_START = "Traceback (most recent call last):"


class _Filter:
    """A stderr that holds back a traceback until its last line, dropping it if it is `_NOISE`.

    Text is parsed per writing thread: tensorstore's threads print their tracebacks at the same
    time, in pieces that interleave.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._lock = threading.Lock()
        self._pending: dict[int, str] = {}  # per thread: an unfinished line or traceback

    def write(self, text: str) -> int:
        with self._lock:
            thread = threading.get_ident()
            pending, out = self._pending.pop(thread, "") + text, []
            while pending:
                if pending.startswith(_START):
                    lines = pending.split("\n")
                    end = next(
                        (i for i in range(1, len(lines) - 1) if lines[i] and not lines[i][0].isspace()), None
                    )
                    if end is None:  # not complete yet
                        break
                    block, pending = lines[: end + 1], "\n".join(lines[end + 1 :])
                    if block[-1].strip() != _NOISE:
                        out.append("\n".join(block) + "\n")
                elif _START.startswith(pending):  # perhaps the start of one: wait
                    break
                else:  # plain text (progress bars write no newline): through at once
                    line, sep, pending = pending.partition("\n")
                    out.append(line + sep)
            if pending:
                self._pending[thread] = pending
            if out:
                self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding... of the real stream
        return getattr(self.stream, name)


def quiet_after_failure() -> None:
    """Quiets asyncio and stderr after a failed read or write.

    The operations it abandoned fail too, in futures nobody awaits; asyncio would log each
    ("... exception was never retrieved", a screen of tensorstore specs), so its logger keeps to
    critical messages, and `sys.stderr` is wrapped (once per process) to drop the closed-event-loop
    tracebacks.
    """
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if not isinstance(sys.stderr, _Filter):
        sys.stderr = _Filter(sys.stderr)


class _BackgroundErrors(logging.Filter):
    """Drops orbax's ERROR records of failures in its background threads (re-raised later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR and "orbax" in record.pathname and record.exc_info is not None
        )


_BACKGROUND_FILTER = _BackgroundErrors()


def quiet_background_errors() -> None:
    """Installs (once) the filter of orbax's background-thread error records on absl's logger."""
    logger = logging.getLogger("absl")
    if _BACKGROUND_FILTER not in logger.filters:
        logger.addFilter(_BACKGROUND_FILTER)


_FULL = ("No space left on device", "Disk quota exceeded")


def write_error(error: Exception, directory: str, latest: int | None) -> Exception:
    """A ValueError naming a full disk (what to do, where it resumes), else `error` itself."""
    if not any(reason in str(error) for reason in _FULL):
        return error
    quiet_after_failure()
    reason = next(r for r in _FULL if r in str(error))
    resume = (
        f"it resumes from step {latest}, the last complete checkpoint"
        if latest
        else "no checkpoint was complete, so it starts over"
    )
    return ValueError(
        f"Could not write a checkpoint in {directory}: {reason.lower()}. Free some "
        f"space and run the same command again: {resume}."
    )


def other_shapes(error: Exception) -> tuple[str, str] | None:
    """`(stored shape, requested shape)` when a restore failed because the shapes differ."""
    found = re.search(
        r"Requested shape: (\([^)]*\)) is not compatible with the stored shape: "
        r"(\([^)]*\))",
        str(error),
    )
    return (found.group(2), found.group(1)) if found else None
