"""How entry points report mistakes a user can fix: one line, no traceback.

Bad input raises ValueError, TypeError or FileNotFoundError with a message that names the problem
and the fix (MissingDependency when an input needs an optional package); divergence raises
FloatingPointError. Entry points print that message and exit with status 1. Set ZEGOT_DEBUG=1 to
see the traceback instead.
"""

import contextlib
import os
import sys
import traceback


class MissingDependency(ImportError):
    """An optional package a particular input needs (e.g. torch for `.pt` weights)."""


class LostPeer(RuntimeError):
    """Another process of a multi-process job is gone (its message is one line)."""


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FloatingPointError, MissingDependency)


@contextlib.contextmanager
def user_errors():
    """Turns `USER_ERRORS` into `error: <message>` on stderr and exit status 1.

    `LostPeer` becomes its line and `LOST_PEER_EXIT_STATUS` at once (`os._exit`: JAX's exit
    handler would wait for the lost process at a shutdown barrier, then abort with a stack trace).
    """
    try:
        yield
    except LostPeer as e:
        if os.environ.get("ZEGOT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(LOST_PEER_EXIT_STATUS)
    except USER_ERRORS as e:
        if os.environ.get("ZEGOT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


# Exit status of a training stopped by SIGTERM (preemption) after saving its checkpoint: EX_TEMPFAIL,
# "try again later". Schedulers can requeue on it; running the same command again resumes.
PREEMPTED_EXIT_STATUS = 75
# Exit status of a process of a multi-process training whose peer was lost (EX_UNAVAILABLE):
# nothing is wrong with the command; run it again on every host to resume.
LOST_PEER_EXIT_STATUS = 69


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
        raise ValueError(
            f"{what} {path} is not writable ({existing} does not allow it); pick "
            "another directory or fix its permissions."
        )


def _in_config_file(error: BaseException, argv: list[str]) -> str | None:
    """`file, line N: Type: message` when the `--config=` file failed, else None.

    The file fails with a syntax error, or an exception raised while its code ran; None for
    anything else (an override, a missing file).
    """
    files = [a.split("=", 1)[1].split(":")[0] for a in argv if a.startswith("--config=")]
    if not files:
        return None
    path = os.path.abspath(files[0])
    if isinstance(error, SyntaxError) and error.filename and os.path.abspath(error.filename) == path:
        return f"{files[0]}, line {error.lineno}: SyntaxError: {error.msg}"
    lines = [
        f.lineno for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path
    ]
    if lines:
        message = " ".join(str(error).split())
        return f"{files[0]}, line {lines[-1]}: {type(error).__name__}: {message}"
    return None


def parse_flags(argv: list[str], flag_values=None) -> list[str]:
    """absl's flag parsing, with config mistakes as one line and exit status 1.

    For `app.run(main, flags_parser=parse_flags)`: a mistyped `--config.a.b` keeps ml_collections'
    "did you mean", a missing config file names the file, a config file that fails (a syntax
    error, an exception) names its file and line; absl's own flag errors are unchanged.
    `flag_values`: absl's global `FLAGS` unless given (tests).
    """
    from absl import flags  # noqa: PLC0415 (only entry points parse flags)

    values = flags.FLAGS if flag_values is None else flag_values
    try:
        parsed = values(argv)
        if "config" in values and values["config"].value is not None:
            _ = values["config"].value.keys  # a config file that failed to load raises here
        return parsed
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        if "Traceback (most recent call last):" in lines and not os.environ.get("ZEGOT_DEBUG"):
            lines = [lines[0].rstrip(":") + ":", lines[-1]]  # the config file's own error only
        print(
            f"FATAL Flags parsing error: {' '.join(lines)}\nPass --helpshort or --helpfull to "
            "see help on flags.",
            file=sys.stderr,
        )
        sys.exit(1)
    except Exception as e:  # the config file and the overrides run user code
        if os.environ.get("ZEGOT_DEBUG"):
            raise
        if where := _in_config_file(e, argv):
            print(f"error: cannot load {where}", file=sys.stderr, flush=True)
            sys.exit(1)
        if not isinstance(e, AttributeError | KeyError | OSError | ValueError | TypeError):
            raise
        inner = e
        while (
            isinstance(inner, AttributeError | KeyError)
            and inner.args
            and isinstance(inner.args[0], BaseException | str)
        ):
            if isinstance(inner.args[0], str):
                inner = inner.args[0]
                break
            inner = inner.args[0]
        text = " ".join(str(inner).split())
        if isinstance(e, AttributeError | KeyError):
            text = f"no config field {text} (check the --config.* overrides)"
        elif isinstance(e, OSError):
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            files = [a for a in argv if a.startswith("--config=")]
            text = f"cannot load {files[0] if files else 'the config'}: {lines[-1]}"
        print(f"error: {text}", file=sys.stderr, flush=True)
        sys.exit(1)
