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
