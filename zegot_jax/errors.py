"""How entry points report mistakes a user can fix: one line, no traceback.

Bad input raises ValueError, TypeError or FileNotFoundError with a message that names the problem
and the fix; divergence raises FloatingPointError. Entry points print that message and exit with
status 1. Set ZEGOT_DEBUG=1 to see the traceback instead.
"""

import contextlib
import os
import sys

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError)


@contextlib.contextmanager
def user_errors():
    """Turns `USER_ERRORS` into `error: <message>` on stderr and exit status 1."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("ZEGOT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


# Exit status of a training stopped by SIGTERM (preemption) after saving its checkpoint: EX_TEMPFAIL,
# "try again later". Schedulers can requeue on it; running the same command again resumes.
PREEMPTED_EXIT_STATUS = 75


def check_writable_dir(path: str, what: str) -> None:
    """Raises ValueError unless `path` is a directory we can write into, or can be created.

    Args:
      path: a local directory (remote `scheme://` paths are not checked).
      what: how the user named it, e.g. '--out' or '--workdir'.
    """
    if "://" in path:
        return
    target = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{what} {path} is a file, not a directory; pick a directory.")
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{what} {path} cannot be created: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable ({existing} does not allow it); pick "
                         "another directory or fix its permissions.")
