"""Where a run lives, a local folder or `gs://BUCKET/PATH`, behind one small API (etils.epath).

Every artefact of a run (checkpoints, config, metrics, TensorBoard, results, figures, the lock)
goes through here or through orbax, which uses etils.epath too. `pathlib.Path("gs://b/x")` is the
local path `gs:/b/x`, so nothing here hands a remote path to pathlib, `open` or `os`.

On object storage an object is written whole (a single upload is atomic: readers see the old
object or the new one) and cannot be appended to or renamed; locally, whole-file writes go to a
temporary file renamed into place. GCS clients are pointed at an emulator by their standard
variables (`STORAGE_EMULATOR_HOST`, `TENSORSTORE_GCS_HTTP_URL`), never by code here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import secrets
import shutil
from collections.abc import Iterator

from etils import epath

from zegot_jax import errors
from zegot_jax.errors import MissingDependency

SUPPORTED = "a local path or gs://BUCKET/PATH"
INSTALL_GCS = "pip install 'zegot-jax[gcs]'"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# etils.epath reads a local path that starts with one of these folders as that scheme's URL.
_EPATH_ROOTS = ("gs", "s3", "az", "hf")


def path(p: str | os.PathLike) -> epath.Path:
    """`p` as an `epath.Path`: a local path (with `~` expanded) or `gs://BUCKET/PATH`.

    Raises:
      ValueError: another scheme (`s3://`, `http://`, ...), a `gs://` URL without a bucket, a
        mangled `gs:/...`, or a local path that epath would read as a URL (`/gs/...`).
    """
    text = os.fspath(p)
    if not isinstance(text, str):
        raise TypeError(f"{text!r}: give the path as text, not bytes.")
    if match := _URL.match(text):
        if match.group(1) != "gs":
            raise ValueError(f"{text}: {match.group(1)}:// storage is not supported; use {SUPPORTED}.")
        if not text[len("gs://") :].split("/", 1)[0]:
            raise ValueError(f"{text} names no bucket; use gs://BUCKET/PATH.")
        return epath.Path(text)
    if text.startswith("gs:"):
        raise ValueError(
            f"{text} is not a gs:// URL (a local folder named 'gs:' would be made); write gs://BUCKET/PATH."
        )
    local = epath.Path(os.path.expanduser(text))
    if local.parts[:1] == ("/",) and local.parts[1:2] and local.parts[1] in _EPATH_ROOTS:
        raise ValueError(
            f"{text}: etils.epath reads a local path under /{local.parts[1]}/ as "
            f"{local.parts[1]}://...; use another local folder."
        )
    return local


def normalise(p: str | os.PathLike) -> str:
    """`p` as the text every reader and writer of a run gets: `~` expanded, the scheme checked."""
    return os.fspath(path(p))


def check_writable(p: str | os.PathLike, what: str) -> None:
    """Raises unless a run may write into folder `p` (creating it if needed), local or gs://.

    Args:
        p: the folder.
        what: how the user named it, e.g. '--out' or '--workdir'.

    Raises:
        ValueError: another scheme; a local file, or a folder that cannot be made or written;
            a gs:// bucket that does not exist or refuses this account.
        MissingDependency: gs:// without the GCS packages (the message names the install line).
    """
    text = normalise(p)
    if not is_remote(text):
        errors.check_writable_dir(text, what)
        return
    require_gcs(text)
    with gcs_errors(text):
        if not bucket_exists(bucket(text)):
            raise FileNotFoundError(
                f"{what} {text}: bucket {bucket(text)} does not exist (or is "
                "not visible to this account); check the name, or create it "
                f"with `gcloud storage buckets create gs://{bucket(text)}`."
            )


def is_remote(p: str | os.PathLike) -> bool:
    """Whether `p` names object storage (`gs://`); other schemes are refused as in `path`."""
    return path(p).as_posix().startswith("gs://")


def bucket(p: str | os.PathLike) -> str | None:
    """The bucket of a gs:// path, None for a local one."""
    return path(p).parts[2] if is_remote(p) else None


def require_gcs(p: str | os.PathLike) -> None:
    """Raises MissingDependency, naming the install command, if `p` needs missing GCS packages.

    That is gcsfs (for epath) and google-cloud-storage (for orbax and the lock), for a gs:// `p`.
    """
    if not is_remote(p):
        return
    missing = [
        name
        for name, module in (("gcsfs", "gcsfs"), ("google-cloud-storage", "google.cloud.storage"))
        if _find(module) is None
    ]
    if missing:
        raise MissingDependency(
            f"{p} is on Google Cloud Storage, which needs {' and '.join(missing)}: {INSTALL_GCS}"
        )


def _find(module: str):
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a missing parent package, a module set to None
        return None


def _gcsfs():
    """The gcsfs filesystem epath uses for gs://, its listing cache cleared.

    Other processes, orbax's tensorstore and the lock write to the bucket behind its back.
    """
    from etils.epath import backend  # noqa: PLC0415 (gs:// only)

    fs = backend.fsspec_backend.fs("gs://")
    fs.invalidate_cache()
    return fs


@contextlib.contextmanager
def gcs_errors(p: str | os.PathLike) -> Iterator[None]:
    """Turns GCS failures on `p` into one line naming the bucket and what to check.

    A missing object stays a plain FileNotFoundError. Local paths pass through unchanged.
    """
    try:
        yield
    except Exception as e:
        if not is_remote(p):
            raise
        translated = explain(e, p)
        if translated is e:
            raise
        raise translated from e


def explain(error: Exception, p: str | os.PathLike) -> Exception:
    """The one-line error for a GCS failure `error` on gs:// path `p`.

    It is `error` itself when that is not a credentials, permission or missing-bucket failure.
    """
    name = bucket(p)
    code = getattr(error, "code", None)  # gcsfs's HttpError and google.api_core's exceptions
    kind = type(error).__name__
    if kind in ("DefaultCredentialsError", "RefreshError") or code == 401 or "Anonymous caller" in str(error):
        return ValueError(
            f"{p}: no usable Google Cloud credentials for bucket {name} ({kind}); "
            "run `gcloud auth application-default login`, set "
            "GOOGLE_APPLICATION_CREDENTIALS, or check the VM's service account and "
            "its storage scope."
        )
    if (
        isinstance(error, PermissionError)
        or code == 403
        or kind == "Forbidden"
        or str(error).startswith("Forbidden")
    ):  # gcsfs raises OSError('Forbidden: ...')
        return ValueError(
            f"{p}: permission denied on bucket {name}; the account in use needs "
            "read and write access to its objects (roles/storage.objectUser or "
            "objectAdmin): check `gcloud storage buckets get-iam-policy gs://"
            f"{name}`."
        )
    if (isinstance(error, FileNotFoundError) or code == 404 or kind == "NotFound") and not bucket_exists(
        name
    ):
        return FileNotFoundError(
            f"{p}: bucket {name} does not exist (or is not visible to this "
            f"account); check the name, or create it with `gcloud storage "
            f"buckets create gs://{name}`."
        )
    return error


def bucket_exists(name: str) -> bool:
    """Whether bucket `name` answers a listing (True when unsure: only a 404 says it is missing)."""
    try:
        _gcsfs().ls(name, detail=False)
    except FileNotFoundError:
        return False
    except Exception:  # forbidden, offline: not known to be missing
        return True
    return True


def check_no_links(p: str | os.PathLike, root: str | os.PathLike) -> None:
    """Raises ValueError if a folder between local `root` (excluded) and `p` is a symbolic link.

    A write through it would land outside the run. `p` itself may be a link: whole-file writes
    replace a link, never what it points to. Does nothing for gs://.
    """
    if is_remote(p):
        return
    target, top = os.path.abspath(path(p)), os.path.abspath(path(root))
    if os.path.commonpath([target, top]) != top:
        raise ValueError(f"{p} is not inside {root}.")
    folder = os.path.dirname(target)
    while len(folder) > len(top):
        if os.path.islink(folder):
            raise ValueError(
                f"{folder} is a symbolic link inside the run {root}: writing "
                f"{os.path.basename(target)} through it would leave the run; replace "
                "it with a folder."
            )
        folder = os.path.dirname(folder)


def write_bytes(p: str | os.PathLike, data: bytes, *, root: str | os.PathLike | None = None) -> None:
    """Replaces `p` whole with `data` (readers see the old content or the new, never a part).

    Locally: a temporary file in the same folder, renamed over `p`; missing folders are made.
    `root`: the run folder `p` lies in; a link between the two is refused (`check_no_links`).
    On gs:// a single object upload is atomic already.
    """
    target = path(p)
    if is_remote(target):
        require_gcs(target)
        with gcs_errors(target):
            target.write_bytes(data)
        return
    if root is not None:
        check_no_links(target, root)
    os.makedirs(target.parent, exist_ok=True)
    tmp = os.path.join(target.parent, f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # the umask's mode
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # replaces a link itself, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(p: str | os.PathLike, text: str, *, root: str | os.PathLike | None = None) -> None:
    """`write_bytes` of `text` in UTF-8."""
    write_bytes(p, text.encode("utf-8"), root=root)


def read_bytes(p: str | os.PathLike) -> bytes:
    """The whole content of `p` (FileNotFoundError if absent)."""
    source = path(p)
    require_gcs(source)
    with gcs_errors(source):
        return source.read_bytes()


def read_text(p: str | os.PathLike) -> str:
    """`read_bytes` decoded as UTF-8."""
    return read_bytes(p).decode("utf-8")


def exists(p: str | os.PathLike) -> bool:
    """Whether `p` is a file or a folder (on gs://: an object, or a prefix with objects)."""
    target = path(p)
    if not is_remote(target):
        return os.path.lexists(target)
    require_gcs(target)
    with gcs_errors(target):
        return _gcsfs().exists(str(target))


def listdir(p: str | os.PathLike) -> list[str]:
    """The sorted names directly in folder `p`; [] if there is none.

    On gs:// a folder exists only through the objects under it.
    """
    target = path(p)
    if not is_remote(target):
        return sorted(os.listdir(target)) if os.path.isdir(target) else []
    require_gcs(target)
    with gcs_errors(target):
        try:
            entries = _gcsfs().ls(str(target), detail=False)
        except FileNotFoundError:
            if not bucket_exists(bucket(target)):
                raise
            return []
    prefix = str(target).removeprefix("gs://").rstrip("/") + "/"
    return sorted(
        {e.removeprefix(prefix).split("/", 1)[0] for e in entries if e.startswith(prefix) and e != prefix}
    )


def _objects(root: epath.Path) -> list[str]:
    """Every object under gs:// folder `root`, as paths relative to it."""
    prefix = str(root).removeprefix("gs://").rstrip("/") + "/"
    return sorted(
        o.removeprefix(prefix)
        for o in _gcsfs().find(str(root))
        if o.startswith(prefix) and not o.endswith("/")
    )


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies folder `src` to `dst` (which must not exist); returns the copied files.

    The files are named relative to `src`.

    Both local (links are copied as links, never followed), both gs:// (server-side copies), or
    a local `src` uploaded to a gs:// `dst` (its regular files; links are refused).
    """
    source, target = path(src), path(dst)
    if is_remote(source) and not is_remote(target):
        raise ValueError(f"Cannot copy {src} to {dst}: copy a bucket's folder to a bucket.")
    if exists(target):
        raise FileExistsError(f"Cannot copy {src} to {dst}: {dst} exists.")
    if is_remote(target) and not is_remote(source):
        return _upload_tree(source, target)
    if not is_remote(source):
        shutil.copytree(source, target, symlinks=True)
        return sorted(
            os.path.relpath(os.path.join(d, f), source) for d, _, files in os.walk(source) for f in files
        )
    with gcs_errors(source):
        names = _objects(source)
        if not names:
            raise FileNotFoundError(f"Cannot copy {src}: no objects under it.")
        fs = _gcsfs()
        for name in names:  # server-side copies, object by object
            fs.copy(f"{source}/{name}", f"{target}/{name}")
        return names


def _upload_tree(source: epath.Path, target: epath.Path) -> list[str]:
    """`copy_tree` of a local folder into a bucket, file by file."""
    names = []
    for folder, dirs, files in os.walk(source):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(folder, name)):
                raise ValueError(f"Cannot upload {source}: {os.path.join(folder, name)} is a link.")
        for name in sorted(files):
            relative = os.path.relpath(os.path.join(folder, name), source)
            write_bytes(target / relative, (source / relative).read_bytes())
            names.append(relative)
    return sorted(names)


def move_tree(
    src: str | os.PathLike, dst: str | os.PathLike, *, root: str | os.PathLike | None = None
) -> None:
    """Moves folder `src` to `dst` (which must not exist).

    For example a damaged checkpoint step into `corrupt_checkpoints/`. Locally a rename (of a
    link itself, never its target). On gs://, where nothing renames, every object is copied and
    checked at `dst` (same size) before the copied objects, and only those, are removed from
    `src`: nothing is deleted that was not copied. `root`: the local run folder; a link between it
    and `dst` is refused (`check_no_links`).
    """
    source, target = path(src), path(dst)
    if not is_remote(source):
        if root is not None:
            check_no_links(target, root)
        if os.path.lexists(target):
            raise FileExistsError(f"Cannot move {src} to {dst}: {dst} exists.")
        os.makedirs(target.parent, exist_ok=True)
        os.rename(source, target)
        return
    names = copy_tree(source, target)
    with gcs_errors(source):
        fs = _gcsfs()
        for name in names:
            if fs.size(f"{target}/{name}") != fs.size(f"{source}/{name}"):
                raise OSError(f"Copy of {source}/{name} to {target} differs in size; {src} is kept.")
        fs.rm([f"{source}/{name}" for name in names])


def remove_tree(p: str | os.PathLike) -> None:
    """Removes folder `p` and everything under it.

    Nothing if absent; a local link is removed itself, never what it points to.
    """
    target = path(p)
    if not is_remote(target):
        if os.path.islink(target) or os.path.isfile(target):
            os.unlink(target)
        elif os.path.isdir(target):
            shutil.rmtree(target)
        return
    require_gcs(target)
    with gcs_errors(target):
        if names := _objects(target):
            _gcsfs().rm([f"{target}/{name}" for name in names])
